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

use rdma_transport::wire::{ForwardState, GapStatus};

/// What one relay link last reported (`forward` is `None` when no report is fresh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayReport {
    pub forward: Option<ForwardState>,
    /// Highest LSN the relay holds (0 before its first report).
    pub held_lsn: u64,
    /// No report yet, but the link is younger than a report's freshness: its first report
    /// is on its way (a relay reports every 100 ms), so it is not silent yet.
    pub first_due: bool,
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
///
/// Reports are taken by each relay at its own moment, 100 ms apart: a forwarder's report
/// may show less than a backup's only because it is older, and the primary feeds every
/// relay. So a forwarder that reports gets [`FORWARDER_STALL_NS`] whether or not its last
/// report already shows what is missing; and a link whose first report is still due is
/// waited for, not taken for an older relay that never reports.
pub fn stall_pull_wanted(relays: &[RelayReport], next: u64, stalled_ns: u64) -> StallVerdict {
    let silent = relays.iter().any(|r| r.forward.is_none() && !r.first_due);
    let has_more = |r: &&RelayReport| r.forward.is_some() && r.held_lsn >= next;
    let mut forwarders = relays
        .iter()
        .filter(|r| matches!(r.forward, Some(ForwardState::Forwarding | ForwardState::Holding)));
    if forwarders
        .clone()
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
    if relays.iter().any(|r| r.first_due) && stalled_ns < FORWARDER_STALL_NS {
        return StallVerdict::Wait;
    }
    if !relays.iter().any(|r| has_more(&r)) {
        return StallVerdict::NothingMore;
    }
    if forwarders.next().is_some() && stalled_ns < FORWARDER_STALL_NS {
        return StallVerdict::Wait;
    }
    StallVerdict::Pull
}

/// One relay link as a stall pull sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallLink {
    /// No request outstanding on the link.
    pub free: bool,
    /// The request outstanding is a chained pull (the relay is streaming).
    pub chain_pull: bool,
    /// The relay's report is fresh.
    pub reported: bool,
    /// Highest LSN the relay reported holding.
    pub held_lsn: u64,
}

/// Whom a stall pull from `first` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StallTargets {
    /// The reporting relay that holds the most past `first` (the next one from `rr` on a
    /// tie): the one that carries it over the WAN.
    pub best: Option<usize>,
    /// `best`, and every free relay without a fresh report (asked as before reports
    /// existed).
    pub ask: Vec<usize>,
}

/// The links a stall pull asks, or `None` while a reporting relay is already streaming
/// the range (a chained pull in flight): asking another would carry it twice.
pub fn stall_targets(links: &[StallLink], rr: usize, first: u64) -> Option<StallTargets> {
    if links.iter().any(|l| l.reported && l.chain_pull) {
        return None;
    }
    let n = links.len();
    let best = (0..n)
        .map(|k| (rr + k) % n)
        .filter(|&i| links[i].free && links[i].reported && links[i].held_lsn >= first)
        .max_by_key(|&i| links[i].held_lsn);
    let ask = (0..n)
        .filter(|&i| links[i].free && (Some(i) == best || !links[i].reported))
        .collect();
    Some(StallTargets { best, ask })
}

/// What follows the reply to a chained pull (stall pull or drain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStep {
    /// The reply carried ops: ask for what follows, from this LSN.
    Continue(u64),
    /// Nothing held from the standby's next LSN on: a drain is done with this relay.
    Drained,
    /// Nothing past what was asked, but the standby is still below that (a hole): ask
    /// once more from its next LSN (once per drain: a relay that lacks the hole answers
    /// the same again).
    Rescan(u64),
}

/// The step after a chained pull from `first_asked` got `status` with ops up to `last`,
/// the standby's next LSN being `next`; `rescanned`: this drain already asked again.
pub fn after_chain_reply(
    first_asked: u64,
    status: GapStatus,
    last: Option<u64>,
    next: u64,
    rescanned: bool,
) -> ReplyStep {
    match (status, last) {
        (GapStatus::Complete | GapStatus::Partial, Some(last)) => ReplyStep::Continue(next.max(last + 1)),
        _ if first_asked <= next || rescanned => ReplyStep::Drained,
        _ => ReplyStep::Rescan(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(f: Option<ForwardState>, held: u64) -> RelayReport {
        RelayReport {
            forward: f,
            held_lsn: held,
            first_due: false,
        }
    }

    fn due() -> RelayReport {
        RelayReport {
            forward: None,
            held_lsn: 0,
            first_due: true,
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
    fn a_forwarder_whose_report_shows_less_than_a_backups_gets_its_time() {
        // The forwarder's last report shows less than the backup's (taken earlier, or the
        // primary reached it later): it is waited for as a delivering forwarder is, then
        // fetched around.
        for f in [Holding, Forwarding] {
            let relays = [r(Some(f), 99), r(Some(Backup), 500)];
            assert_eq!(stall_pull_wanted(&relays, 100, 300_000_000), StallVerdict::Wait);
            assert_eq!(stall_pull_wanted(&relays, 100, FORWARDER_STALL_NS), StallVerdict::Pull);
        }
    }

    #[test]
    fn a_new_link_gets_its_first_report_before_it_counts_as_silent() {
        let relays = [due(), r(Some(Backup), 500)];
        assert_eq!(stall_pull_wanted(&relays, 100, 300_000_000), StallVerdict::Wait);
        assert_eq!(stall_pull_wanted(&relays, 100, FORWARDER_STALL_NS), StallVerdict::Pull);
        // A forwarder holding by policy still says why, whoever else is due.
        let relays = [due(), r(Some(Holding), 500)];
        assert_eq!(stall_pull_wanted(&relays, 100, 300_000_000), StallVerdict::PolicyHold);
        // Past its freshness a link without a report is silent: pull as before reports.
        let relays = [r(None, 0), r(Some(Forwarding), 500)];
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

    fn link(free: bool, chain_pull: bool, reported: bool, held_lsn: u64) -> StallLink {
        StallLink {
            free,
            chain_pull,
            reported,
            held_lsn,
        }
    }

    #[test]
    fn a_stall_pull_asks_the_relay_holding_the_most_and_the_silent_ones() {
        let links = [
            link(true, false, true, 300),
            link(true, false, true, 500),
            link(true, false, false, 0),
            link(false, false, false, 0),
        ];
        let t = stall_targets(&links, 0, 100).unwrap();
        assert_eq!(t.best, Some(1));
        assert_eq!(t.ask, vec![1, 2], "the best reporter and the free silent one");
        // Nobody reporting holds past `first`: only the silent ones.
        let t = stall_targets(&links, 0, 600).unwrap();
        assert_eq!((t.best, t.ask), (None, vec![2]));
        // A tie goes to the next one from `rr` on.
        let tie = [link(true, false, true, 500), link(true, false, true, 500)];
        assert_eq!(stall_targets(&tie, 1, 100).unwrap().best, Some(0));
    }

    #[test]
    fn no_stall_pull_while_a_reporting_relay_streams() {
        let links = [link(false, true, true, 500), link(true, false, true, 500)];
        assert_eq!(stall_targets(&links, 0, 100), None);
        // A silent relay's chained pull does not count (it may be an older relay).
        let links = [link(false, true, false, 0), link(true, false, true, 500)];
        assert!(stall_targets(&links, 0, 100).is_some());
    }

    #[test]
    fn chained_replies_continue_finish_or_rescan_once() {
        use GapStatus::*;
        assert_eq!(
            after_chain_reply(100, Complete, Some(131), 120, false),
            ReplyStep::Continue(132)
        );
        assert_eq!(
            after_chain_reply(100, Partial, Some(110), 120, false),
            ReplyStep::Continue(120)
        );
        assert_eq!(after_chain_reply(120, NotHeld, None, 120, false), ReplyStep::Drained);
        // Asked past a hole at 120: ask again from 120, once.
        assert_eq!(
            after_chain_reply(150, NotHeld, None, 120, false),
            ReplyStep::Rescan(120)
        );
        assert_eq!(after_chain_reply(150, NotHeld, None, 120, true), ReplyStep::Drained);
    }
}
