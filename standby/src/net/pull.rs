//! When the standby fetches around its forwarder: pure logic, no I/O, no clock.
//!
//! The forwarder relay pushes ops at the pace its forward policy allows; backups push
//! nothing. When the standby's next LSN stops moving it may be because the forwarder died
//! or stalled (then the standby pulls from every relay, as it always did), or because the
//! forwarder holds ops back by policy (a closed window, an interval not yet due, an empty
//! bandwidth bucket): pulling then would carry on the WAN what the policy exists to hold
//! back, and carry it twice. Each relay says which it is in its `PrimaryLiveness` report
//! (every 100 ms): backup, forwarding, or holding, with the highest LSN it holds.
//!
//! Genuine holes (an LSN missing while later ones arrived) are fetched regardless; that is
//! the receiver's `gaps()`, not this. A failover drain pulls regardless too.

use rdma_transport::wire::ForwardState;

/// What one relay link last reported (`forward` is `None` when no report is fresh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayReport {
    pub forward: Option<ForwardState>,
    /// Highest LSN the relay holds (0 before its first report).
    pub held_lsn: u64,
}

/// What to do about a stalled next LSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallVerdict {
    /// Pull from every relay: the forwarder is gone, silent, or delivering nothing.
    Pull = 0,
    /// A forwarder holds what is missing back by policy: wait for it.
    PolicyHold,
    /// Every relay reported and none holds anything past what the standby has.
    NothingMore,
    /// A forwarder says it is delivering: give it until [`FORWARDER_STALL_NS`].
    Wait,
}

/// No progress for this long while a forwarder reports it is delivering: fetch around it.
pub const FORWARDER_STALL_NS: u64 = 1_000_000_000;

/// The verdict for relays `relays` when the standby's next LSN is `next` and has not moved
/// for `stalled_ns`.
pub fn stall_pull_wanted(relays: &[RelayReport], next: u64, stalled_ns: u64) -> StallVerdict {
    let silent = relays.iter().any(|r| r.forward.is_none());
    let has_more = |r: &&RelayReport| r.forward.is_some() && r.held_lsn >= next;
    let forwarders = || {
        relays
            .iter()
            .filter(|r| matches!(r.forward, Some(ForwardState::Forwarding | ForwardState::Holding)))
    };
    if forwarders()
        .filter(has_more)
        .any(|r| r.forward == Some(ForwardState::Holding))
    {
        return StallVerdict::PolicyHold;
    }
    if silent {
        // A relay we know nothing about (an older relay, or its reports are late): the
        // behaviour before reports existed.
        return StallVerdict::Pull;
    }
    if !relays.iter().any(|r| has_more(&r)) {
        return StallVerdict::NothingMore;
    }
    if forwarders().find(has_more).is_some() && stalled_ns < FORWARDER_STALL_NS {
        return StallVerdict::Wait;
    }
    StallVerdict::Pull
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(f: Option<ForwardState>, held: u64) -> RelayReport {
        RelayReport {
            forward: f,
            held_lsn: held,
        }
    }
    use ForwardState::*;

    #[test]
    fn a_forwarder_holding_by_policy_is_not_fetched_around() {
        let relays = [r(Some(Holding), 500), r(Some(Backup), 500)];
        assert_eq!(
            stall_pull_wanted(&relays, 100, 60_000_000_000),
            StallVerdict::PolicyHold
        );
        // Even with a relay that has not reported: the forwarder said why.
        let relays = [r(Some(Holding), 500), r(None, 0)];
        assert_eq!(
            stall_pull_wanted(&relays, 100, 60_000_000_000),
            StallVerdict::PolicyHold
        );
    }

    #[test]
    fn a_holding_forwarder_without_what_is_missing_does_not_block_a_pull() {
        // The forwarder holds back only what the standby already has; a backup holds more.
        let relays = [r(Some(Holding), 99), r(Some(Backup), 500)];
        assert_eq!(stall_pull_wanted(&relays, 100, 300_000_000), StallVerdict::Pull);
    }

    #[test]
    fn forwarder_gone_pulls_from_backups() {
        let relays = [r(Some(Backup), 500)];
        assert_eq!(stall_pull_wanted(&relays, 100, 300_000_000), StallVerdict::Pull);
        let relays = [r(None, 0), r(Some(Backup), 500)];
        assert_eq!(stall_pull_wanted(&relays, 100, 300_000_000), StallVerdict::Pull);
    }

    #[test]
    fn nothing_held_past_next_means_no_pull() {
        let relays = [r(Some(Forwarding), 99), r(Some(Backup), 99)];
        assert_eq!(
            stall_pull_wanted(&relays, 100, 60_000_000_000),
            StallVerdict::NothingMore
        );
    }

    #[test]
    fn a_delivering_forwarder_gets_time_then_is_fetched_around() {
        let relays = [r(Some(Forwarding), 500), r(Some(Backup), 500)];
        assert_eq!(stall_pull_wanted(&relays, 100, 300_000_000), StallVerdict::Wait);
        assert_eq!(stall_pull_wanted(&relays, 100, FORWARDER_STALL_NS), StallVerdict::Pull);
    }

    #[test]
    fn no_reports_at_all_pulls_as_before() {
        let relays = [r(None, 0), r(None, 0)];
        assert_eq!(stall_pull_wanted(&relays, 100, 300_000_000), StallVerdict::Pull);
    }
}
