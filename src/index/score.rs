//! Scoring and ranking: the f32 dot product, the total order on hits, a top-k keeper, and the
//! shortlist that decides which code-scored candidates must be rescored exactly.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use super::{Hit, RowId};

/// Orders hits best first: higher score, then newer, then higher rowid (a total order, so
/// pages are stable).
pub fn better(a: &Hit, b: &Hit) -> Ordering {
    b.score
        .total_cmp(&a.score)
        .then(b.created_at.cmp(&a.created_at))
        .then(b.row.cmp(&a.row))
}

/// Heap entry that puts the worst kept hit on top.
struct Worst(Hit);

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        better(&self.0, &other.0) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        better(&self.0, &other.0)
    }
}

/// Keeps the best `k` hits seen.
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Worst>,
}

impl TopK {
    pub fn new(k: usize) -> TopK {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    pub fn push(&mut self, hit: Hit) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Worst(hit));
        } else if let Some(worst) = self.heap.peek()
            && better(&hit, &worst.0) == Ordering::Less
        {
            self.heap.pop();
            self.heap.push(Worst(hit));
        }
    }

    pub fn into_sorted(self) -> Vec<Hit> {
        let mut hits: Vec<Hit> = self.heap.into_iter().map(|w| w.0).collect();
        hits.sort_by(better);
        hits
    }
}

/// A candidate scored by its code: the exact score lies within `bound` of `score`.
#[derive(Debug, Clone, Copy)]
pub struct Approx {
    pub row: RowId,
    pub created_at: i64,
    pub score: f32,
    pub bound: f32,
}

impl Approx {
    fn low(&self) -> f32 {
        self.score - self.bound
    }

    fn high(&self) -> f32 {
        self.score + self.bound
    }
}

/// Collects the candidates that may be among the exact top `k` at or above `floor`: the `k`
/// best lower bounds seen set a cut, and a candidate whose upper bound falls below the cut can
/// never make the page. Memory stays near `k` however many candidates stream past.
pub struct Shortlist {
    k: usize,
    floor: f32,
    lows: BinaryHeap<Reverse<Ordered>>,
    kept: Vec<Approx>,
}

/// An f32 with a total order, for the heap of lower bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ordered(f32);

impl Eq for Ordered {}
impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Shortlist {
    /// `floor`: nothing below it counts (a similarity threshold; `f32::NEG_INFINITY` for none).
    pub fn new(k: usize, floor: f32) -> Shortlist {
        Shortlist {
            k,
            floor,
            lows: BinaryHeap::with_capacity(k + 1),
            kept: Vec::new(),
        }
    }

    /// The cut: the `k`-th best lower bound once `k` candidates are sure to pass, else `floor`.
    fn cut(&self) -> f32 {
        match self.lows.peek() {
            Some(Reverse(low)) if self.lows.len() >= self.k => low.0.max(self.floor),
            _ => self.floor,
        }
    }

    pub fn push(&mut self, c: Approx) {
        if self.k == 0 || c.high() < self.cut() {
            return;
        }
        // Only a candidate sure to clear the floor may raise the cut.
        if c.low() >= self.floor {
            self.lows.push(Reverse(Ordered(c.low())));
            if self.lows.len() > self.k {
                self.lows.pop();
            }
        }
        self.kept.push(c);
        if self.kept.len() >= 4 * self.k + 256 {
            let cut = self.cut();
            self.kept.retain(|c| c.high() >= cut);
        }
    }

    /// The candidates that need exact scores, in no particular order.
    pub fn finish(mut self) -> Vec<Approx> {
        let cut = self.cut();
        self.kept.retain(|c| c.high() >= cut);
        self.kept
    }
}

/// Dot product of two equally long vectors: AVX2 and FMA when the processor has them (checked
/// once), otherwise a portable loop the compiler vectorises.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the processor supports AVX2 and FMA (checked by `avx2_fma`).
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

/// Whether the processor has AVX2 and FMA (checked once).
#[cfg(target_arch = "x86_64")]
pub fn avx2_fma() -> bool {
    use std::sync::OnceLock;
    static FAST: OnceLock<bool> = OnceLock::new();
    *FAST.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    })
}

/// Eight independent accumulators, so the compiler can vectorise without reassociating.
pub(super) fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 floats at i + 8k < n, inside both slices.
    unsafe {
        while i + 32 <= n {
            for (k, slot) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * k));
                let y = _mm256_loadu_ps(pb.add(i + 8 * k));
                *slot = _mm256_fmadd_ps(x, y, *slot);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        let tail: f32 = (i..n).map(|j| *pa.add(j) * *pb.add(j)).sum();
        lanes.iter().sum::<f32>() + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortlist_keeps_everything_that_could_make_the_page() {
        let c = |row: RowId, score: f32, bound: f32| Approx {
            row,
            created_at: 0,
            score,
            bound,
        };
        let mut s = Shortlist::new(2, f32::NEG_INFINITY);
        for x in [
            c(1, 0.90, 0.01),
            c(2, 0.80, 0.01),
            c(3, 0.795, 0.01), // overlaps the second: kept
            c(4, 0.50, 0.01),  // cannot reach 0.79: dropped
        ] {
            s.push(x);
        }
        let mut rows: Vec<RowId> = s.finish().iter().map(|a| a.row).collect();
        rows.sort_unstable();
        assert_eq!(rows, [1, 2, 3]);

        // With a floor, only candidates sure to clear it raise the cut.
        let mut s = Shortlist::new(1, 0.85);
        for x in [c(1, 0.86, 0.02), c(2, 0.84, 0.02), c(3, 0.70, 0.02)] {
            s.push(x);
        }
        let mut rows: Vec<RowId> = s.finish().iter().map(|a| a.row).collect();
        rows.sort_unstable();
        assert_eq!(rows, [1, 2], "both may be the single best above 0.85");
    }
}
