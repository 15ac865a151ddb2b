//! Vectors held as int8 codes with one scale each: a quarter of the memory of f32. Every score
//! computed from a code comes with a rigorous bound on how far it can be from the exact f32
//! cosine, so a search can shortlist by codes and rescore only the rows whose bounds overlap the
//! cut with the exact vectors from storage: results are those of an exact f32 search.

#[cfg(test)]
use super::dot;
#[cfg(target_arch = "x86_64")]
use super::score::avx2_fma;

/// Codes run from -127 to 127; the scale maps the largest component to 127.
const LEVELS: f32 = 127.0;

/// Slack for floating-point rounding in the two dot products a bound compares (each about
/// `dim * 2^-24` relative for unit vectors at 384 dimensions: 2.3e-5).
const ROUNDING_SLACK: f32 = 1e-4;

/// Appends `v`'s codes to `codes` and returns its scale.
pub fn quantize_into(v: &[f32], codes: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 && max.is_finite() {
        max / LEVELS
    } else {
        1.0
    };
    codes.extend(
        v.iter()
            .map(|x| (x / scale).round().clamp(-LEVELS, LEVELS) as i8),
    );
    scale
}

/// The most a code's score can differ from the exact dot product with a query whose L1 norm is
/// `query_l1`: each component is off by at most half a step.
pub fn error_bound(query_l1: f32, scale: f32) -> f32 {
    0.5 * scale * query_l1 + ROUNDING_SLACK
}

/// A read-only view of a partition's codes: slot `i` is `codes[i*dim..]` times `scales[i]`.
#[derive(Clone, Copy)]
pub struct Codes<'a> {
    pub dim: usize,
    pub codes: &'a [i8],
    pub scales: &'a [f32],
}

impl<'a> Codes<'a> {
    pub fn len(&self) -> usize {
        self.scales.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scales.is_empty()
    }

    pub fn code(&self, i: usize) -> &'a [i8] {
        &self.codes[i * self.dim..(i + 1) * self.dim]
    }

    /// The approximate dot product of `q` with slot `i`.
    pub fn score(&self, q: &[f32], i: usize) -> f32 {
        dot_i8(q, self.code(i)) * self.scales[i]
    }

    /// Slot `i` as f32 (its approximation).
    pub fn decode(&self, i: usize) -> Vec<f32> {
        let s = self.scales[i];
        self.code(i).iter().map(|&c| f32::from(c) * s).collect()
    }
}

/// Dot product of an f32 query with an int8 code.
pub fn dot_i8(q: &[f32], c: &[i8]) -> f32 {
    debug_assert_eq!(q.len(), c.len());
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the processor supports AVX2 and FMA (checked by `avx2_fma`).
        return unsafe { dot_i8_avx2(q, c) };
    }
    dot_i8_portable(q, c)
}

fn dot_i8_portable(q: &[f32], c: &[i8]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (cq, cc) = (q.chunks_exact(8), c.chunks_exact(8));
    let (rq, rc) = (cq.remainder(), cc.remainder());
    for (x, y) in cq.zip(cc) {
        for i in 0..8 {
            acc[i] += x[i] * f32::from(y[i]);
        }
    }
    let tail: f32 = rq.iter().zip(rc).map(|(x, y)| x * f32::from(*y)).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_i8_avx2(q: &[f32], c: &[i8]) -> f32 {
    use std::arch::x86_64::*;
    let n = q.len().min(c.len());
    let (pq, pc) = (q.as_ptr(), c.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: every load reads 16 codes and 16 floats at i < i + 16 <= n, inside both slices.
    unsafe {
        while i + 16 <= n {
            let bytes = _mm_loadu_si128(pc.add(i).cast::<__m128i>());
            let lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
            let hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(bytes)));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), lo, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i + 8)), hi, acc1);
            i += 16;
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc0, acc1));
        let tail: f32 = (i..n).map(|j| *pq.add(j) * f32::from(*pc.add(j))).sum();
        lanes.iter().sum::<f32>() + tail
    }
}

/// The L1 norm of a query (what its bounds scale with).
pub fn l1(q: &[f32]) -> f32 {
    q.iter().map(|x| x.abs()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(seed: u64, dim: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        let n = dot(&v, &v).sqrt();
        v.iter().map(|c| c / n).collect()
    }

    #[test]
    fn int8_dot_matches_naive_for_every_length() {
        for len in [0usize, 1, 7, 15, 16, 17, 33, 384, 385] {
            let q = vector(1, len.max(1));
            let c: Vec<i8> = (0..len)
                .map(|i| (i as i32 * 37 % 255 - 127) as i8)
                .collect();
            let q = &q[..len];
            let naive: f32 = q.iter().zip(&c).map(|(x, y)| x * f32::from(*y)).sum();
            assert!((dot_i8(q, &c) - naive).abs() < 1e-3, "{len}");
            assert!((dot_i8_portable(q, &c) - naive).abs() < 1e-3, "{len}");
        }
    }

    #[test]
    fn scores_stay_within_their_bound() {
        let dim = 384;
        let mut codes = Vec::new();
        let mut scales = Vec::new();
        let vs: Vec<Vec<f32>> = (0..200).map(|i| vector(i + 10, dim)).collect();
        for v in &vs {
            scales.push(quantize_into(v, &mut codes));
        }
        let view = Codes {
            dim,
            codes: &codes,
            scales: &scales,
        };
        let mut worst = 0.0f32;
        for qi in 0..20 {
            let q = vector(qi + 1000, dim);
            let ql1 = l1(&q);
            for (i, v) in vs.iter().enumerate() {
                let err = (view.score(&q, i) - dot(&q, v)).abs();
                assert!(err <= error_bound(ql1, scales[i]), "{err}");
                worst = worst.max(err);
            }
        }
        // The bound is rigorous; the typical error is far smaller.
        assert!(worst < 0.01, "{worst}");
    }

    #[test]
    fn degenerate_vectors_quantize_without_dividing_by_zero() {
        let mut codes = Vec::new();
        assert_eq!(quantize_into(&[0.0; 4], &mut codes), 1.0);
        assert_eq!(codes, [0; 4]);
    }
}
