//! CRC32C of a concatenation from the CRCs of its parts, in tens to hundreds of
//! nanoseconds: a primary sending one op to several relays computes the op's data CRC once
//! and seals each relay's frame from it ([`crate::wire::BatchEncoder::finish_with_crcs`]);
//! the relay journal seals a record around a frame whose body CRC is already known
//! (verified on receive) without reading the frame's bytes again.
//!
//! CRC32C (reflected, init and final XOR all ones) is linear over GF(2): for byte strings
//! A and B, `crc(A ++ B) = crc(A) * x^(8 * len(B)) mod P  xor  crc(B)` where the
//! multiplication is of polynomials over GF(2) in the reflected bit order the CRC uses (the
//! all-ones init and final XOR cancel out). `x^(8n) mod P` is a product of precomputed
//! powers `x^(2^k) mod P`, one per set bit of `8n`. The `crc32c` crate's own
//! `crc32c_combine` builds its operator matrices on every call (microseconds); this one
//! costs one multiplication per set bit of the length.

/// The CRC32C polynomial, reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a * b mod P`, both reflected (bit 31 is the coefficient of x^0).
const fn mul(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        if m == 0 {
            break;
        }
    }
    p
}

/// `X2K[k] = x^(2^k) mod P`.
const X2K: [u32; 64] = {
    let mut t = [0u32; 64];
    t[0] = 1 << 30; // x^1
    let mut k = 1;
    while k < 64 {
        t[k] = mul(t[k - 1], t[k - 1]);
        k += 1;
    }
    t
};

/// `x^(8 * n) mod P`.
fn x8n(n: u64) -> u32 {
    let mut p = 1u32 << 31; // x^0
    let mut n = n;
    let mut k = 3; // 8 * n = n * 2^3
    while n != 0 {
        if n & 1 != 0 {
            p = mul(X2K[k & 63], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// CRC32C of `A ++ B` from `crc_a = crc32c(A)`, `crc_b = crc32c(B)` and `len_b = len(B)`.
pub fn combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    if len_b == 0 {
        return crc_a;
    }
    mul(x8n(len_b), crc_a) ^ crc_b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_matches_the_crc_of_the_concatenation() {
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for &(a, b) in &[
            (0, 0),
            (0, 1),
            (1, 0),
            (5, 3),
            (48, 16),
            (64, 16_384),
            (100, 65_536),
            (3, 69_997),
        ] {
            let (x, y) = data.split_at(a);
            let y = &y[..b];
            let whole = crc32c::crc32c_append(crc32c::crc32c(x), y);
            assert_eq!(
                combine(crc32c::crc32c(x), crc32c::crc32c(y), b as u64),
                whole,
                "{a} + {b}"
            );
            // The crate's own (slow) combine agrees.
            assert_eq!(crc32c::crc32c_combine(crc32c::crc32c(x), crc32c::crc32c(y), b), whole);
        }
    }
}
