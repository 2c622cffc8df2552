//! Bucket fingerprints as PostgreSQL `numeric`s.
//!
//! A [`Fingerprint`] is the sum of its ids (each read as a 256-bit
//! little-endian integer) modulo 2²⁵⁶, and their count. The `buckets` table
//! keeps the sum *unreduced*, as an exact `numeric` (`id_sum`), so that a
//! fold adds to it on the server (`id_sum = id_sum + delta`) without first
//! reading it. Reading a bucket reduces the sum modulo 2²⁵⁶ here.
//!
//! A delta is the exact sum of the new ids of one bucket in one fold
//! transaction: at most 20,000 ids, so it fits five 64-bit limbs with room
//! to spare.

use cairn::{ChangeId, Fingerprint};

use crate::error::corrupt;

/// The exact sum of some ids, as an unbounded-enough integer (320 bits:
/// 2⁶⁴ ids of 2²⁵⁶ each before it could overflow).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delta {
    limbs: [u64; 5],
    count: u64,
}

impl Delta {
    /// Add one id.
    pub(crate) fn add(&mut self, id: &ChangeId) {
        let b = id.as_bytes();
        let mut carry = 0u128;
        for (i, limb) in self.limbs.iter_mut().enumerate() {
            let word = if i < 4 {
                let mut w = [0u8; 8];
                w.copy_from_slice(&b[i * 8..i * 8 + 8]);
                u64::from_le_bytes(w)
            } else {
                0
            };
            let v = u128::from(*limb) + u128::from(word) + carry;
            *limb = v as u64;
            carry = v >> 64;
        }
        self.count += 1;
    }

    /// How many ids were added.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// The sum in decimal, for a `numeric` parameter.
    pub(crate) fn decimal(&self) -> String {
        const TEN19: u64 = 10_000_000_000_000_000_000;
        let mut limbs = self.limbs;
        let mut chunks = Vec::with_capacity(6);
        loop {
            // Divide the 320-bit number by 10^19, most significant limb first.
            let mut rem = 0u128;
            for limb in limbs.iter_mut().rev() {
                let cur = (rem << 64) | u128::from(*limb);
                *limb = (cur / u128::from(TEN19)) as u64;
                rem = cur % u128::from(TEN19);
            }
            chunks.push(rem as u64);
            if limbs.iter().all(|l| *l == 0) {
                break;
            }
        }
        let mut out = String::with_capacity(chunks.len() * 19);
        let mut it = chunks.iter().rev();
        if let Some(first) = it.next() {
            out.push_str(&first.to_string());
        }
        for c in it {
            out.push_str(&format!("{c:019}"));
        }
        out
    }
}

/// A stored bucket: its unreduced sum (the text form of a `numeric` with
/// scale 0) and its count.
pub(crate) fn fingerprint_from(sum: &str, count: i64) -> cairn::Result<Fingerprint> {
    let bad = || {
        corrupt(format!(
            "a bucket's sum {sum:?} is not a non-negative integer"
        ))
    };
    if sum.is_empty() || sum.len() > 4096 {
        return Err(bad());
    }
    let count = u64::try_from(count).map_err(|_| corrupt(format!("a bucket count is {count}")))?;
    // sum mod 2^256, digit by digit (x ↦ 10x + d is a ring map mod 2^256).
    let mut limbs = [0u64; 4];
    for d in sum.bytes() {
        if !d.is_ascii_digit() {
            return Err(bad());
        }
        let mut carry = u128::from(d - b'0');
        for limb in limbs.iter_mut() {
            let v = u128::from(*limb) * 10 + carry;
            *limb = v as u64;
            carry = v >> 64;
        }
    }
    let mut bytes = [0u8; 40];
    for (i, limb) in limbs.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&limb.to_le_bytes());
    }
    bytes[32..].copy_from_slice(&count.to_be_bytes());
    Ok(Fingerprint::from_bytes(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic, well-spread test ids (splitmix64).
    fn id(seed: u64) -> ChangeId {
        let mut x = seed;
        let mut b = [0u8; 32];
        for chunk in b.chunks_mut(8) {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        ChangeId::from_bytes(b)
    }

    #[test]
    fn small_numbers_print_and_parse() {
        let d = Delta::default();
        assert_eq!(d.decimal(), "0");
        assert_eq!(fingerprint_from("0", 0).unwrap(), Fingerprint::default());
        let mut one = [0u8; 32];
        one[0] = 1;
        let mut d = Delta::default();
        d.add(&ChangeId::from_bytes(one));
        assert_eq!(d.decimal(), "1");
        let mut d = Delta::default();
        d.add(&ChangeId::from_bytes([0xff; 32]));
        d.add(&ChangeId::from_bytes([0xff; 32]));
        // 2 × (2^256 − 1)
        assert_eq!(
            d.decimal(),
            "231584178474632390847141970017375815706539969331281128078915168015826259279870"
        );
    }

    #[test]
    fn an_unreduced_sum_reads_as_the_fingerprint() {
        // Any split of the ids into deltas, summed exactly (as the numeric
        // column does), reads back as the fingerprint of all of them.
        for n in [1u64, 2, 3, 50, 1000] {
            let mut want = Fingerprint::default();
            let mut parts = [Delta::default(); 3];
            for i in 0..n {
                let x = id(i * 7 + n);
                want.add(&x);
                parts[(i % 3) as usize].add(&x);
            }
            let mut total = Delta::default();
            for p in &parts {
                let mut carry = 0u128;
                for (t, l) in total.limbs.iter_mut().zip(p.limbs) {
                    let v = u128::from(*t) + u128::from(l) + carry;
                    *t = v as u64;
                    carry = v >> 64;
                }
                total.count += p.count;
            }
            let got = fingerprint_from(&total.decimal(), total.count() as i64).unwrap();
            assert_eq!(got, want, "n = {n}");
        }
    }

    #[test]
    fn bad_sums_are_corrupt_not_panics() {
        for bad in ["", "-1", "1.5", "12a", " 1"] {
            assert!(fingerprint_from(bad, 0).is_err(), "{bad:?}");
        }
        assert!(fingerprint_from("1", -1).is_err());
        assert!(fingerprint_from(&"9".repeat(5000), 1).is_err());
    }
}
