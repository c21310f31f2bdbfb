//! The retention ring: the bounded byte ring holding ops some relay still lacks after they
//! completed, from which a relay that comes back is caught up (`docs/replication.md`).

use super::*;

pub(super) struct Retained {
    pub(super) op: OpMeta,
    /// Byte range in the retention ring.
    pub(super) start: usize,
    pub(super) refs: u32,
}

/// The bounded byte ring holding ops some relay still lacks after they completed.
pub(super) struct Retention {
    pub(super) buf: Vec<u8>,
    pub(super) entries: VecDeque<Retained>,
    /// Next free byte.
    pub(super) head: usize,
    pub(super) used: u64,
}

impl Retention {
    pub(super) fn new(bytes: usize) -> Self {
        Self {
            buf: vec![0; bytes],
            entries: VecDeque::new(),
            head: 0,
            used: 0,
        }
    }
    pub(super) fn first_lsn(&self) -> Option<u64> {
        self.entries.front().map(|e| e.op.lsn)
    }
    pub(super) fn get_mut(&mut self, lsn: u64) -> Option<&mut Retained> {
        let first = self.first_lsn()?;
        let i = lsn.checked_sub(first)? as usize;
        self.entries.get_mut(i)
    }
    /// Drops entries up to `lsn` that no connection references.
    pub(super) fn trim(&mut self, upto: u64) {
        while let Some(e) = self.entries.front() {
            if e.op.lsn > upto || e.refs > 0 {
                break;
            }
            self.pop_front();
        }
    }
    pub(super) fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.used -= e.op.data.len() as u64;
            if self.entries.is_empty() {
                self.head = 0;
                self.used = 0;
            }
        }
    }
    /// Where `len` contiguous bytes can go, if the ring has room without touching live
    /// entries.
    pub(super) fn room(&self, len: usize) -> Option<usize> {
        if len > self.buf.len() {
            return None;
        }
        let Some(front) = self.entries.front() else {
            return Some(0);
        };
        let tail = front.start; // oldest live byte
        let head = self.head;
        if self.entries.iter().all(|e| e.op.data.is_empty()) {
            return Some(head.min(self.buf.len() - len));
        }
        if head > tail || (head == tail && self.used == 0) {
            if head + len <= self.buf.len() {
                return Some(head);
            }
            if len <= tail {
                return Some(0);
            }
            None
        } else if head + len <= tail {
            Some(head)
        } else {
            None
        }
    }
    /// Copies `op` in; drops the oldest unreferenced entries when full. Returns the LSN of
    /// the newest entry dropped to make room (relays needing it cannot be caught up).
    pub(super) fn push(&mut self, op: &OpMeta) -> (bool, u64) {
        let len = op.data.len();
        let mut dropped = 0;
        loop {
            if let Some(at) = self.room(len) {
                self.buf[at..at + len].copy_from_slice(&op.data);
                // SAFETY: the ring's bytes are not written again until this entry is
                // trimmed, which waits for `refs == 0`; `buf` is never reallocated.
                let data = unsafe { DataRef::new(&self.buf[at..at + len]) };
                self.entries.push_back(Retained {
                    op: OpMeta { data, ..*op },
                    start: at,
                    refs: 0,
                });
                self.head = at + len;
                self.used += len as u64;
                return (true, dropped);
            }
            match self.entries.front() {
                Some(e) if e.refs == 0 => {
                    dropped = e.op.lsn;
                    self.pop_front();
                }
                _ => return (false, dropped),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(lsn: u64, data: &[u8]) -> OpMeta {
        // SAFETY: `data` outlives the push, which copies it into the ring.
        let data = unsafe { DataRef::new(data) };
        OpMeta {
            lsn,
            kind: OpKind::Write,
            arg0: 0,
            arg1: 1,
            data,
            crc: 0,
        }
    }

    #[test]
    fn keeps_ops_in_order_and_trims_what_every_relay_has() {
        let mut r = Retention::new(64);
        for lsn in 1..=3 {
            assert_eq!(r.push(&op(lsn, &[lsn as u8; 16])), (true, 0));
        }
        assert_eq!(r.first_lsn(), Some(1));
        assert_eq!(&r.get_mut(2).unwrap().op.data[..], &[2u8; 16]);
        assert!(r.get_mut(9).is_none());
        r.trim(2);
        assert_eq!((r.first_lsn(), r.used), (Some(3), 16));
        r.trim(3);
        assert_eq!((r.first_lsn(), r.used, r.head), (None, 0, 0));
    }

    #[test]
    fn a_full_ring_drops_the_oldest_unreferenced_op_and_says_which() {
        let mut r = Retention::new(32);
        r.push(&op(1, &[1; 16]));
        r.push(&op(2, &[2; 16]));
        assert_eq!(r.push(&op(3, &[3; 16])), (true, 1));
        assert_eq!(r.first_lsn(), Some(2));
        // Wrapped to the start: the newest bytes are intact.
        assert_eq!(&r.get_mut(3).unwrap().op.data[..], &[3u8; 16]);
        assert_eq!(&r.get_mut(2).unwrap().op.data[..], &[2u8; 16]);
    }

    #[test]
    fn a_referenced_op_is_never_overwritten() {
        let mut r = Retention::new(32);
        r.push(&op(1, &[1; 16]));
        r.push(&op(2, &[2; 16]));
        r.get_mut(1).unwrap().refs = 1;
        assert_eq!(r.push(&op(3, &[3; 16])), (false, 0));
        r.trim(5);
        assert_eq!(r.first_lsn(), Some(1), "a connection still reads it");
        assert_eq!(&r.get_mut(1).unwrap().op.data[..], &[1u8; 16]);
        r.get_mut(1).unwrap().refs = 0;
        assert_eq!(r.push(&op(3, &[3; 16])), (true, 1));
    }

    #[test]
    fn an_op_larger_than_the_ring_is_refused_and_empty_ops_cost_nothing() {
        let mut r = Retention::new(16);
        assert_eq!(r.push(&op(1, &[0; 32])), (false, 0));
        for lsn in 1..=100 {
            assert_eq!(r.push(&op(lsn, &[])), (true, 0));
        }
        assert_eq!((r.entries.len(), r.used), (100, 0));
    }
}
