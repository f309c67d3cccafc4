//! A log-linear histogram of `u64` values (cycles), in the manner of HdrHistogram.
//!
//! Written here rather than taken from crates.io: `hdrhistogram` (7.x) and `histogram`
//! (iopsystems, 1.x) both need `std`, and no maintained `no_std` log-linear histogram was
//! found; the service runs without `std`.
//!
//! # Buckets
//!
//! Values below [`SUB_BUCKETS`] (16) have a bucket each, so they are exact. Above, every
//! power of two `[2^e, 2^(e+1))` is split into 16 equal sub-buckets of width `2^(e-4)`: a
//! value's bucket is at most 1/16 of the value wide (relative error at most 1/16). The
//! powers of two go up to `2^47`; every value from [`OVERFLOW_AT`] (`2^48`, about a day
//! at 3 GHz) on lands in one last bucket, `[2^48, u64::MAX]`. `min`, `max` and `total` are
//! kept exactly beside the buckets, whatever the value.
//!
//! Counts are `u32` per bucket (saturating; 721 of them, 2.9 KiB per histogram, allocated
//! once in [`Histogram::new`]) and `u64` for the whole histogram.
#![forbid(unsafe_code)]

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

/// log2 of the sub-buckets per power of two.
const SUB_BITS: u32 = 4;
/// Sub-buckets per power of two; also the number of exact buckets at the bottom.
pub const SUB_BUCKETS: usize = 1 << SUB_BITS;
/// log2 of the first value that no log-linear bucket holds.
const TOP_BITS: u32 = 48;
/// The first value that goes to the overflow bucket.
pub const OVERFLOW_AT: u64 = 1 << TOP_BITS;
/// Buckets in all: the exact ones, 16 per power of two from `2^4` to `2^47`, and the
/// overflow bucket.
pub const BUCKETS: usize = SUB_BUCKETS + (TOP_BITS - SUB_BITS) as usize * SUB_BUCKETS + 1;

/// The bucket of `value`.
pub fn index_of(value: u64) -> usize {
    if value < SUB_BUCKETS as u64 {
        value as usize
    } else if value >= OVERFLOW_AT {
        BUCKETS - 1
    } else {
        let exp = 63 - value.leading_zeros(); // SUB_BITS..TOP_BITS
        let shift = exp - SUB_BITS;
        let sub = (value >> shift) as usize & (SUB_BUCKETS - 1);
        SUB_BUCKETS + (shift as usize) * SUB_BUCKETS + sub
    }
}

/// The values bucket `index` holds: `(lo, hi)`, both included.
pub fn bounds(index: usize) -> (u64, u64) {
    if index < SUB_BUCKETS {
        (index as u64, index as u64)
    } else if index >= BUCKETS - 1 {
        (OVERFLOW_AT, u64::MAX)
    } else {
        let shift = ((index - SUB_BUCKETS) / SUB_BUCKETS) as u32;
        let sub = ((index - SUB_BUCKETS) % SUB_BUCKETS) as u64;
        let lo = (SUB_BUCKETS as u64 + sub) << shift;
        (lo, lo + (1u64 << shift) - 1)
    }
}

/// The histogram. See the module documentation for its buckets.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Box<[u32]>,
    count: u64,
    min: u64,
    max: u64,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram (allocates its [`BUCKETS`] counts; see [`Histogram::try_new`]).
    pub fn new() -> Histogram {
        Histogram::with_counts(vec![0u32; BUCKETS])
    }

    /// An empty histogram, or `None` when the heap has no room for its counts.
    pub fn try_new() -> Option<Histogram> {
        let mut counts = Vec::new();
        counts.try_reserve_exact(BUCKETS).ok()?;
        counts.resize(BUCKETS, 0u32);
        Some(Histogram::with_counts(counts))
    }

    fn with_counts(counts: Vec<u32>) -> Histogram {
        Histogram {
            counts: counts.into_boxed_slice(),
            count: 0,
            min: u64::MAX,
            max: 0,
            total: 0,
        }
    }

    /// Counts `value` once.
    pub fn record(&mut self, value: u64) {
        let slot = &mut self.counts[index_of(value)];
        *slot = slot.saturating_add(1);
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.total = self.total.saturating_add(value);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The smallest value recorded (0 when empty).
    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    /// The largest value recorded (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The sum of the values recorded, saturating at `u64::MAX` (584 years of cycles at
    /// 1 GHz: in practice exact).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q_permille / 1000` (p50 = 500, p90 = 900, p99 = 990; above
    /// 1000 counts as 1000): the upper bound of the bucket holding the value of rank
    /// `ceil(count * q)` (at least 1), clamped to `[min, max]` (HdrHistogram's "highest
    /// equivalent value"). So the answer is never below the exact quantile, and above it by
    /// less than 1/16 of it (exact below 16; at most `max` in the overflow bucket). 0 when
    /// empty.
    pub fn value_at_quantile(&self, q_permille: u32) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = u128::from(q_permille.min(1000));
        let rank = (u128::from(self.count) * q).div_ceil(1000).max(1);
        let mut seen: u128 = 0;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += u128::from(n);
            if n != 0 && seen >= rank {
                return bounds(index).1.clamp(self.min, self.max);
            }
        }
        // Only when a bucket's count saturated: the rank lies past what the buckets hold.
        self.max
    }

    /// The nonzero buckets, ascending: `(lo, hi, count)`.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n != 0)
            .map(|(index, &n)| {
                let (lo, hi) = bounds(index);
                (lo, hi, u64::from(n))
            })
    }

    /// Forgets every value (keeps the allocation).
    pub fn reset(&mut self) {
        self.counts.fill(0);
        self.count = 0;
        self.min = u64::MAX;
        self.max = 0;
        self.total = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bucket_count_and_width() {
        assert_eq!(BUCKETS, 16 + 44 * 16 + 1);
        assert_eq!(index_of(15), 15);
        assert_eq!(index_of(16), 16);
        assert_eq!(bounds(16), (16, 16));
        assert_eq!(bounds(31), (31, 31));
        assert_eq!(bounds(32), (32, 33));
        assert_eq!(index_of(1024), index_of(1087));
        assert_eq!(bounds(index_of(1024)), (1024, 1087));
        assert_eq!(index_of(OVERFLOW_AT - 1), BUCKETS - 2);
        assert_eq!(index_of(OVERFLOW_AT), BUCKETS - 1);
        assert_eq!(index_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn bounds_are_contiguous_and_cover_u64() {
        assert_eq!(bounds(0).0, 0);
        for index in 0..BUCKETS - 1 {
            let (lo, hi) = bounds(index);
            assert!(lo <= hi, "bucket {index}");
            assert_eq!(hi + 1, bounds(index + 1).0, "bucket {index}");
            assert_eq!(index_of(lo), index);
            assert_eq!(index_of(hi), index);
            // At most 1/16 of the values it holds wide.
            assert!((hi - lo + 1) * SUB_BUCKETS as u64 <= lo.max(SUB_BUCKETS as u64));
        }
        assert_eq!(bounds(BUCKETS - 1).1, u64::MAX);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in [3, 0, 15, 3, 7] {
            h.record(v);
        }
        assert_eq!((h.count(), h.min(), h.max(), h.total()), (5, 0, 15, 28));
        // Sorted: 0 3 3 7 15.
        assert_eq!(h.value_at_quantile(0), 0);
        assert_eq!(h.value_at_quantile(200), 0);
        assert_eq!(h.value_at_quantile(201), 3);
        assert_eq!(h.value_at_quantile(500), 3);
        assert_eq!(h.value_at_quantile(700), 7);
        assert_eq!(h.value_at_quantile(990), 15);
        assert_eq!(h.value_at_quantile(5000), 15);
        let buckets: Vec<_> = h.buckets().collect();
        assert_eq!(buckets, [(0, 0, 1), (3, 3, 2), (7, 7, 1), (15, 15, 1)]);
    }

    #[test]
    fn quantiles_are_clamped_to_min_and_max() {
        let mut h = Histogram::new();
        h.record(1030);
        // The bucket is 1024..=1087, but the only value is 1030.
        assert_eq!(h.value_at_quantile(500), 1030);
        h.record(1025);
        assert_eq!(h.value_at_quantile(500), 1030);
        assert_eq!(h.buckets().collect::<Vec<_>>(), [(1024, 1087, 2)]);
    }

    #[test]
    fn empty_and_reset() {
        let mut h = Histogram::new();
        assert_eq!((h.count(), h.min(), h.max(), h.total()), (0, 0, 0, 0));
        assert_eq!(h.value_at_quantile(500), 0);
        assert_eq!(h.buckets().count(), 0);
        h.record(100);
        h.record(u64::MAX);
        h.reset();
        assert_eq!((h.count(), h.min(), h.max(), h.total()), (0, 0, 0, 0));
        assert_eq!(h.buckets().count(), 0);
        h.record(9);
        assert_eq!((h.min(), h.max()), (9, 9));
    }

    #[test]
    fn overflow_values_are_exact_in_min_max_total() {
        let mut h = Histogram::new();
        h.record(OVERFLOW_AT + 5);
        h.record(u64::MAX - 1);
        assert_eq!(h.min(), OVERFLOW_AT + 5);
        assert_eq!(h.max(), u64::MAX - 1);
        assert_eq!(h.total(), u64::MAX, "saturates");
        assert_eq!(h.value_at_quantile(500), u64::MAX - 1);
        assert_eq!(h.value_at_quantile(0), u64::MAX - 1);
        assert_eq!(
            h.buckets().collect::<Vec<_>>(),
            [(OVERFLOW_AT, u64::MAX, 2)]
        );
    }

    /// Values spread over many powers of two (and the exact range).
    fn any_values() -> impl Strategy<Value = Vec<u64>> {
        let value = prop_oneof![
            0u64..64,
            (0u32..TOP_BITS).prop_flat_map(|bits| 0u64..(2u64 << bits).min(OVERFLOW_AT)),
        ];
        proptest::collection::vec(value, 1..400)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Against a sorted vector: the answer is the exact quantile rounded up by less than
        /// 1/16 (exact below 16), and min, max, count, total are exact.
        #[test]
        fn quantiles_match_a_sorted_oracle(values in any_values(), q in 0u32..=1000) {
            let mut h = Histogram::new();
            for &v in &values {
                h.record(v);
            }
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let n = sorted.len() as u64;
            prop_assert_eq!(h.count(), n);
            prop_assert_eq!(h.min(), sorted[0]);
            prop_assert_eq!(h.max(), *sorted.last().unwrap());
            prop_assert_eq!(h.total(), values.iter().sum::<u64>());
            for q in [q, 0, 500, 900, 990, 1000] {
                let rank = (n * u64::from(q)).div_ceil(1000).max(1);
                let exact = sorted[rank as usize - 1];
                let got = h.value_at_quantile(q);
                prop_assert!(got >= exact, "q {} got {} exact {}", q, got, exact);
                prop_assert!(got <= *sorted.last().unwrap());
                if exact < SUB_BUCKETS as u64 {
                    prop_assert_eq!(got, exact);
                } else {
                    prop_assert!((got - exact) * 16 < exact, "q {} got {} exact {}", q, got, exact);
                }
            }
        }

        /// The buckets hold every value once, ascending, disjoint, each value in its bucket.
        #[test]
        fn buckets_partition_the_values(values in any_values()) {
            let mut h = Histogram::new();
            for &v in &values {
                h.record(v);
            }
            let buckets: Vec<_> = h.buckets().collect();
            prop_assert_eq!(buckets.iter().map(|b| b.2).sum::<u64>(), values.len() as u64);
            for pair in buckets.windows(2) {
                prop_assert!(pair[0].1 < pair[1].0);
            }
            for (lo, hi, count) in buckets {
                let inside = values.iter().filter(|&&v| lo <= v && v <= hi).count() as u64;
                prop_assert_eq!(inside, count);
            }
        }
    }
}
