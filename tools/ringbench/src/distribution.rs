//! Skewed offsets (`--random-distribution`), with fio's parameters: `zipf:THETA`, `pareto:H` and
//! `normal:PCT`, each with an optional `:CENTER`. The sampling is rand_distr's (Zipf, Pareto,
//! Normal); what fio adds around it is followed:
//!
//! - zipf:THETA: block ranks follow Zipf with exponent THETA over the file's blocks (fio's
//!   default THETA 1.1; unlike fio, 1.0 is allowed, rand_distr handles it).
//! - pareto:H (0 < H < 1): fio's `(n - 1) * u^(ln H / ln(1 - H))`, the share H of the blocks
//!   taking the share 1 - H of the accesses (0.2: "80/20"); drawn as `(n - 1) / Y` with Y from
//!   rand_distr's Pareto (scale 1, shape ln(1 - H) / ln H), the same law.
//! - normal:PCT (0 <= PCT < 100): what fio computes: the mean of 12 uniform ranks (a normal law
//!   around the middle with a standard deviation of 1/12 of the range, drawn from rand_distr's
//!   Normal), plus a uniform deviation of +-PCT/2 % of the range.
//!
//! Ranks are then scattered over the file (fio hashes them; here a bijection, `rank * a mod n`
//! with `a` coprime to `n`, so no two hot ranks share a block) and rotated by CENTER times the
//! range (fio's default: a random rotation for zipf and pareto, none for normal).

use crate::error::BenchError;
use rand::Rng;
use rand_distr::{Distribution as _, Normal, Pareto, Zipf};
use serde::Serialize;
use std::fmt;

/// fio's defaults when no parameter is given (`FIO_DEF_ZIPF`, `FIO_DEF_PARETO`).
const DEFAULT_ZIPF: f64 = 1.1;
const DEFAULT_PARETO: f64 = 0.2;

/// How random offsets are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Distribution {
    /// Every block equally likely (fio's `random`).
    #[default]
    Uniform,
    Zipf {
        theta: f64,
        center: Option<f64>,
    },
    Pareto {
        h: f64,
        center: Option<f64>,
    },
    Normal {
        pct: f64,
        center: Option<f64>,
    },
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, v, c) = match *self {
            Distribution::Uniform => return f.write_str("random"),
            Distribution::Zipf { theta, center } => ("zipf", theta, center),
            Distribution::Pareto { h, center } => ("pareto", h, center),
            Distribution::Normal { pct, center } => ("normal", pct, center),
        };
        write!(f, "{name}:{v}")?;
        if let Some(c) = c {
            write!(f, ":{c}")?;
        }
        Ok(())
    }
}

impl Serialize for Distribution {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Distribution {
    /// Parses fio's syntax: `random`, `zipf[:THETA[:CENTER]]`, `pareto[:H[:CENTER]]`,
    /// `normal[:PCT[:CENTER]]`.
    pub fn parse(s: &str) -> Result<Self, BenchError> {
        let bad = |why: &str| {
            BenchError::usage(format!(
                "--random-distribution {s:?}: {why}; use random, zipf:THETA (e.g. zipf:1.2), \
                 pareto:H (0 < H < 1, e.g. pareto:0.2) or normal:PCT (0 <= PCT < 100), each with \
                 an optional :CENTER from 0 to 1"
            ))
        };
        let mut parts = s.trim().split(':');
        let name = parts.next().unwrap_or("").to_ascii_lowercase();
        let num = |p: Option<&str>| -> Result<Option<f64>, BenchError> {
            p.map(|v| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| bad(&format!("{v:?} is not a number")))
            })
            .transpose()
        };
        let value = num(parts.next())?;
        let center = num(parts.next())?;
        if parts.next().is_some() {
            return Err(bad("too many ':' parts"));
        }
        if center.is_some_and(|c| !(0.0..=1.0).contains(&c)) {
            return Err(bad("CENTER must be from 0 to 1"));
        }
        let d = match name.as_str() {
            "random" | "uniform" if value.is_none() => Distribution::Uniform,
            "zipf" => {
                let theta = value.unwrap_or(DEFAULT_ZIPF);
                if theta <= 0.0 {
                    return Err(bad("zipf THETA must be above 0"));
                }
                Distribution::Zipf { theta, center }
            }
            "pareto" => {
                let h = value.unwrap_or(DEFAULT_PARETO);
                if h <= 0.0 || h >= 1.0 {
                    return Err(bad("pareto H must be between 0 and 1 (exclusive)"));
                }
                Distribution::Pareto { h, center }
            }
            "normal" | "gauss" => {
                let pct = value.unwrap_or(0.0);
                if !(0.0..100.0).contains(&pct) {
                    return Err(bad("normal PCT must be from 0 to below 100"));
                }
                Distribution::Normal { pct, center }
            }
            _ => return Err(bad("unknown distribution")),
        };
        Ok(d)
    }

    pub fn is_uniform(&self) -> bool {
        *self == Distribution::Uniform
    }
}

/// Draws block indexes in `0..n` for one file.
#[derive(Debug, Clone)]
pub struct BlockPicker {
    n: u64,
    law: Law,
    /// Scatter multiplier, coprime with `n`.
    mult: u64,
    /// Rotation (CENTER times `n`, or random).
    off: u64,
}

#[derive(Debug, Clone)]
enum Law {
    Uniform,
    Zipf(Zipf<f64>),
    /// Y, with the block rank `(n - 1) / Y`.
    Pareto(Pareto<f64>),
    /// The rank's normal part, and the half-width of the uniform deviation in blocks.
    Normal(Normal<f64>, u64),
}

/// Greatest common divisor.
fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl BlockPicker {
    /// The picker of a file of `n` blocks; `salt` (a per-file random number) gives the default
    /// rotation of zipf and pareto.
    pub fn new(d: Distribution, n: u64, salt: u64) -> Self {
        let n = n.max(1);
        let rotate = |center: Option<f64>, default: u64| match center {
            Some(c) => ((n as f64 * c) as u64).min(n - 1),
            None => default % n,
        };
        let (law, off) = match d {
            Distribution::Uniform => (Law::Uniform, 0),
            Distribution::Zipf { theta, center } => {
                // Valid by construction: n >= 1, theta > 0 (checked when parsed).
                let z = Zipf::new(n as f64, theta).unwrap_or_else(|_| {
                    Zipf::new(1.0, 1.0).expect("Zipf(1, 1) is a valid distribution")
                });
                (Law::Zipf(z), rotate(center, salt))
            }
            Distribution::Pareto { h, center } => {
                let shape = (1.0 - h).ln() / h.ln();
                let p = Pareto::new(1.0, shape).unwrap_or_else(|_| {
                    Pareto::new(1.0, 1.0).expect("Pareto(1, 1) is a valid distribution")
                });
                (Law::Pareto(p), rotate(center, salt))
            }
            Distribution::Normal { pct, center } => {
                let mean = n as f64 / 2.0;
                let normal = Normal::new(mean, n as f64 / 12.0)
                    .unwrap_or_else(|_| Normal::new(0.0, 1.0).expect("N(0, 1) is valid"));
                // fio: stddev = ceil(n * pct / 100), at most n / 2; deviation in [-sd/2, sd/2).
                let sd = ((n as f64 * pct / 100.0).ceil() as u64).min(n / 2);
                // fio's center shifts from the middle: (center - 0.5) * n.
                let off = center.map_or(0, |c| {
                    let shift = ((c - 0.5) * n as f64) as i64;
                    shift.rem_euclid(n as i64) as u64
                });
                (Law::Normal(normal, sd / 2), off)
            }
        };
        // An odd constant near n * golden ratio, made coprime with n.
        let mut mult = ((n as f64 * 0.618_033_988_75) as u64) | 1;
        while n > 1 && gcd(mult % n, n) != 1 {
            mult += 2;
        }
        BlockPicker {
            n,
            law,
            mult: mult % n.max(2),
            off,
        }
    }

    /// The next block index, in `0..n`.
    #[inline]
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        let n = self.n;
        let rank = match &self.law {
            Law::Uniform => return ((u128::from(rng.next_u64()) * u128::from(n)) >> 64) as u64,
            Law::Zipf(z) => (z.sample(rng) as u64).saturating_sub(1),
            Law::Pareto(p) => ((n - 1) as f64 / p.sample(rng)) as u64,
            Law::Normal(normal, half) => {
                let base = normal.sample(rng).round().clamp(0.0, n as f64) as i64;
                let dev = if *half > 0 {
                    let width = 2 * *half;
                    ((u128::from(rng.next_u64()) * u128::from(width)) >> 64) as i64 - *half as i64
                } else {
                    0
                };
                // fio halves the deviation until the sum fits.
                let mut d = dev;
                while base + d >= n as i64 || base + d < 0 {
                    d /= 2;
                }
                (base + d).clamp(0, n as i64 - 1) as u64
            }
        }
        .min(n - 1);
        self.place(rank)
    }

    /// Where rank `rank` lands: scattered, then rotated.
    #[inline]
    fn place(&self, rank: u64) -> u64 {
        if self.n <= 1 {
            return 0;
        }
        let scattered = ((u128::from(rank) * u128::from(self.mult)) % u128::from(self.n)) as u64;
        ((u128::from(scattered) + u128::from(self.off)) % u128::from(self.n)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::SplitMix;

    #[test]
    fn parses_fio_syntax() {
        assert_eq!(
            Distribution::parse("random").unwrap(),
            Distribution::Uniform
        );
        assert_eq!(
            Distribution::parse("zipf:1.2").unwrap(),
            Distribution::Zipf {
                theta: 1.2,
                center: None
            }
        );
        assert_eq!(
            Distribution::parse("zipf").unwrap(),
            Distribution::Zipf {
                theta: 1.1,
                center: None
            }
        );
        assert_eq!(
            Distribution::parse("pareto:0.3:0.25").unwrap(),
            Distribution::Pareto {
                h: 0.3,
                center: Some(0.25)
            }
        );
        assert_eq!(
            Distribution::parse("normal:5").unwrap().to_string(),
            "normal:5"
        );
        for bad in [
            "zipf:0",
            "zipf:x",
            "pareto:1",
            "pareto:0",
            "normal:100",
            "normal:-1",
            "zipf:1:2",
            "zipf:1:0.5:1",
            "zoned:60/10",
            "",
        ] {
            let e = Distribution::parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
            assert!(e.to_string().contains("--random-distribution"), "{e}");
        }
    }

    /// Access counts per block for `draws` picks (fixed seed).
    fn counts(d: Distribution, n: u64, draws: usize) -> Vec<u64> {
        let p = BlockPicker::new(d, n, 12345);
        let mut rng = SplitMix::new(42);
        let mut c = vec![0u64; n as usize];
        for _ in 0..draws {
            let b = p.pick(&mut rng);
            assert!(b < n);
            c[b as usize] += 1;
        }
        c
    }

    /// Share of the accesses that go to the hottest `frac` of the blocks.
    fn hot_share(mut c: Vec<u64>, frac: f64) -> f64 {
        let total: u64 = c.iter().sum();
        c.sort_unstable_by(|a, b| b.cmp(a));
        let k = (c.len() as f64 * frac).ceil() as usize;
        c[..k].iter().sum::<u64>() as f64 / total as f64
    }

    #[test]
    fn zipf_follows_the_law() {
        let n = 1000;
        let theta = 1.2;
        let c = counts(
            Distribution::Zipf {
                theta,
                center: Some(0.0),
            },
            n,
            200_000,
        );
        // The hottest block is rank 0 at the center, and P(rank k) ~ 1 / (k+1)^theta.
        let zeta: f64 = (1..=n).map(|k| (k as f64).powf(-theta)).sum();
        let p1 = 1.0 / zeta;
        let got1 = c[0] as f64 / 200_000.0;
        assert!((got1 / p1 - 1.0).abs() < 0.05, "p(rank 1) {got1} vs {p1}");
        let mut sorted = c.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let p2 = 2f64.powf(-theta) / zeta;
        let got2 = sorted[1] as f64 / 200_000.0;
        assert!((got2 / p2 - 1.0).abs() < 0.08, "p(rank 2) {got2} vs {p2}");
        // Ranks are scattered: the two hottest blocks are not neighbours.
        let second = c.iter().position(|&x| x == sorted[1]).unwrap();
        assert!(second > 1, "rank 2 at block {second}");
        // Uniform for comparison: the hottest 10% get about 10%.
        let u = counts(Distribution::Uniform, n, 200_000);
        assert!(hot_share(u, 0.1) < 0.13);
        assert!(hot_share(c, 0.1) > 0.6);
    }

    #[test]
    fn pareto_h_is_the_hot_fraction() {
        // h = 0.2: the hottest 20% of blocks take about 80% of the accesses.
        let c = counts(
            Distribution::Pareto {
                h: 0.2,
                center: None,
            },
            1000,
            200_000,
        );
        let s = hot_share(c, 0.2);
        assert!((0.75..0.86).contains(&s), "hot 20% share {s}");
    }

    #[test]
    fn normal_is_a_bell_around_the_center() {
        // Without scattering the bell would be contiguous; check the spread of the ranks by
        // counting distinct blocks hit: sd = n/12 covers about 4 * sd / n = 1/3 of the file
        // for 95% of the draws.
        let n = 1200;
        let c = counts(
            Distribution::Normal {
                pct: 0.0,
                center: None,
            },
            n,
            100_000,
        );
        let s = hot_share(c.clone(), 1.0 / 3.0);
        assert!((0.9..0.99).contains(&s), "hot third share {s}");
        let wide = counts(
            Distribution::Normal {
                pct: 50.0,
                center: None,
            },
            n,
            100_000,
        );
        assert!(
            hot_share(wide, 1.0 / 3.0) < s,
            "a deviation widens the bell"
        );
    }

    #[test]
    fn scatter_is_a_bijection() {
        for n in [1u64, 2, 3, 10, 64, 1000, 4096, 65_537] {
            let p = BlockPicker::new(Distribution::Uniform, n, 0);
            let mut seen = vec![false; n as usize];
            for r in 0..n {
                let b = p.place(r) as usize;
                assert!(!seen[b], "n {n}: rank {r} lands on a taken block");
                seen[b] = true;
            }
        }
    }
}
