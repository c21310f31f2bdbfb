//! Core masks in the forms SPDK accepts: a hex mask (`0x3`, `3`) or a list
//! with ranges (`[0,2-3]`, `0-1`).

use thiserror::Error;

/// Highest core index a mask may name; masks are parsed into a `u128`.
pub const CORE_INDEX_MAX: u32 = 127;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CpuMaskError {
    #[error("core mask {0:?} is empty: it selects no core")]
    Empty(String),
    #[error("core mask {mask:?} is malformed: {why}")]
    Malformed { mask: String, why: &'static str },
    #[error("core mask {mask:?} names core {core}, above the maximum {CORE_INDEX_MAX}")]
    CoreTooHigh { mask: String, core: u64 },
}

/// Parses a core mask into the ascending list of core indexes it selects.
pub fn parse(mask: &str) -> Result<Vec<u32>, CpuMaskError> {
    let s = mask.trim();
    let malformed = |why| CpuMaskError::Malformed {
        mask: mask.to_string(),
        why,
    };
    let mut bits: u128 = 0;
    if let Some(list) = s.strip_prefix('[') {
        let list = list.strip_suffix(']').ok_or_else(|| malformed("missing ']'"))?;
        parse_list(mask, list, &mut bits)?;
    } else if s.contains(',') || s.contains('-') {
        parse_list(mask, s, &mut bits)?;
    } else {
        let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
        if hex.is_empty() {
            return Err(malformed("no digits"));
        }
        bits = u128::from_str_radix(hex, 16).map_err(|_| malformed("not a hex number"))?;
    }
    if bits == 0 {
        return Err(CpuMaskError::Empty(mask.to_string()));
    }
    Ok((0..=CORE_INDEX_MAX).filter(|i| bits & (1u128 << i) != 0).collect())
}

fn parse_list(mask: &str, list: &str, bits: &mut u128) -> Result<(), CpuMaskError> {
    let malformed = |why| CpuMaskError::Malformed {
        mask: mask.to_string(),
        why,
    };
    for part in list.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(malformed("empty element in list"));
        }
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: u64 = lo.parse().map_err(|_| malformed("not a core number"))?;
        let hi: u64 = hi.parse().map_err(|_| malformed("not a core number"))?;
        if lo > hi {
            return Err(malformed("range runs backwards"));
        }
        if hi > CORE_INDEX_MAX as u64 {
            return Err(CpuMaskError::CoreTooHigh {
                mask: mask.to_string(),
                core: hi,
            });
        }
        for c in lo..=hi {
            *bits |= 1u128 << c;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse("0x3").unwrap(), vec![0, 1]);
        assert_eq!(parse("1").unwrap(), vec![0]);
        assert_eq!(parse("[0,2-3]").unwrap(), vec![0, 2, 3]);
        assert_eq!(parse("0-1").unwrap(), vec![0, 1]);
        assert_eq!(parse("0xA").unwrap(), vec![1, 3]);
    }

    #[test]
    fn errors() {
        assert!(matches!(parse("0x0"), Err(CpuMaskError::Empty(_))));
        assert!(matches!(parse("zz"), Err(CpuMaskError::Malformed { .. })));
        assert!(matches!(parse("[3-1]"), Err(CpuMaskError::Malformed { .. })));
        assert!(matches!(parse("[0,200]"), Err(CpuMaskError::CoreTooHigh { .. })));
        assert!(matches!(parse("[0,"), Err(CpuMaskError::Malformed { .. })));
        assert!(matches!(parse(""), Err(CpuMaskError::Malformed { .. })));
    }
}
