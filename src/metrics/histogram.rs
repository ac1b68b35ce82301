//! Fixed-size histograms of atomic counters, their bucket sets, and the number formats of the
//! exposition (TF Serving's 6-significant-digit `le` text).
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::LazyLock;

/// The bucket upper bounds of one histogram family.
#[derive(Debug)]
pub struct Buckets {
    /// Finite upper bounds in the exposed unit, ascending, unrounded (the last bucket is `+Inf`).
    bounds: Vec<f64>,
    /// The `le` text of every bucket, `+Inf` last.
    le: Vec<String>,
    /// Nanoseconds per exposed unit (1e3 for microseconds, 1e9 for seconds).
    unit_ns: f64,
}

impl Buckets {
    /// `count` bounds `scale * growth^i`, computed by repeated multiplication as TensorFlow's
    /// `Buckets::Exponential` does, so the doubles are TF Serving's.
    pub fn exponential(scale: f64, growth: f64, count: usize, unit_ns: f64) -> Buckets {
        let mut bounds = Vec::with_capacity(count);
        let mut b = scale;
        for _ in 0..count {
            bounds.push(b);
            b *= growth;
        }
        Buckets::explicit(bounds, unit_ns)
    }

    pub fn explicit(bounds: Vec<f64>, unit_ns: f64) -> Buckets {
        let mut le: Vec<String> = bounds.iter().map(|&b| fmt_g6(b)).collect();
        le.push("+Inf".into());
        Buckets { bounds, le, unit_ns }
    }

    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// The `le` texts, `+Inf` last.
    pub fn le(&self) -> &[String] {
        &self.le
    }

    /// The bucket a value of `ns` nanoseconds falls in: the first whose bound is >= the value
    /// (Prometheus `le` semantics), or the `+Inf` bucket.
    fn index(&self, ns: u64) -> usize {
        let v = ns as f64 / self.unit_ns;
        self.bounds.partition_point(|&b| b < v)
    }
}

/// TF Serving's request and runtime latency buckets: `10 × 1.8^i` µs, i = 0..32.
pub static TF_LATENCY: LazyLock<Buckets> = LazyLock::new(|| Buckets::exponential(10.0, 1.8, 33, 1e3));

/// TF Serving's batching queue latency buckets: `100 × 1.2^i` µs, i = 0..51 (about 1.3 s).
pub static TF_BATCH_QUEUE: LazyLock<Buckets> = LazyLock::new(|| Buckets::exponential(100.0, 1.2, 52, 1e3));

/// maas's request duration buckets, in seconds: 100 µs to 10 s.
pub static REQUEST_SECONDS: LazyLock<Buckets> = LazyLock::new(|| {
    let b = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    Buckets::explicit(b.to_vec(), 1e9)
});

/// maas's model load duration buckets, in seconds: 100 ms to 10 min.
pub static LOAD_SECONDS: LazyLock<Buckets> = LazyLock::new(|| {
    let b = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
    Buckets::explicit(b.to_vec(), 1e9)
});

/// A histogram of durations: one atomic counter per bucket (not cumulative; the exposition sums
/// them) and the sum in nanoseconds. Recording is two relaxed atomic adds, no lock, no allocation.
#[derive(Debug)]
pub struct Histogram {
    buckets: &'static Buckets,
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn new(buckets: &'static Buckets) -> Histogram {
        Histogram {
            buckets,
            counts: (0..buckets.le.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe_ns(&self, ns: u64) {
        self.counts[self.buckets.index(ns)].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    pub fn buckets(&self) -> &'static Buckets {
        self.buckets
    }

    /// Cumulative counts per bucket (`+Inf` last, equal to the count) and the sum in the exposed
    /// unit. The count is the `+Inf` bucket, so the two always agree.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut total = 0u64;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                total = total.wrapping_add(c.load(Relaxed));
                total
            })
            .collect();
        (cumulative, self.sum_ns.load(Relaxed) as f64 / self.buckets.unit_ns)
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// A double as TensorFlow's `StrCat` prints it (and so TF Serving's `le` labels): 6 significant
/// digits, `%g` style: fixed notation for exponents -4..5, otherwise `d.ddddde±XX`, trailing zeros
/// removed. `10 × 1.8^8` = 1101.996… prints `1102`; `10 × 1.8^29` prints `2.52873e+08`.
pub fn fmt_g6(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if v == 0.0 {
        return "0".into();
    }
    // Rounded to 6 significant digits first: the exponent is the rounded value's, as in C's %g.
    let sci = format!("{v:.5e}");
    let Some((mantissa, exp)) = sci.split_once('e') else { return sci };
    let Ok(exp) = exp.parse::<i32>() else { return sci };
    if (-4..6).contains(&exp) {
        let decimals = usize::try_from(5 - exp).unwrap_or(0);
        strip_zeros(&format!("{v:.decimals$}")).to_string()
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", strip_zeros(mantissa), exp.unsigned_abs())
    }
}

/// Removes trailing zeros after a decimal point, and the point if nothing follows it.
fn strip_zeros(s: &str) -> &str {
    if !s.contains('.') {
        return s;
    }
    s.trim_end_matches('0').trim_end_matches('.')
}

/// A sample value: integers without a fraction, `+Inf`/`-Inf`/`NaN` as the text format spells them,
/// other values in Rust's shortest round-trip form.
pub fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_serving_bucket_texts() {
        let want = "10 18 32.4 58.32 104.976 188.957 340.122 612.22 1102 1983.59 3570.47 6426.84 11568.3 20823 \
                    37481.3 67466.4 121440 218591 393464 708235 1.27482e+06 2.29468e+06 4.13043e+06 7.43477e+06 \
                    1.33826e+07 2.40887e+07 4.33596e+07 7.80473e+07 1.40485e+08 2.52873e+08 4.55172e+08 \
                    8.19309e+08 1.47476e+09 +Inf";
        assert_eq!(TF_LATENCY.le().join(" "), want);
        // The bounds themselves are the unrounded doubles.
        assert_eq!(TF_LATENCY.bounds()[8], 10.0 * 1.8 * 1.8 * 1.8 * 1.8 * 1.8 * 1.8 * 1.8 * 1.8);
        assert!((TF_LATENCY.bounds()[8] - 1101.9960576).abs() < 1e-9);
        assert_eq!(TF_BATCH_QUEUE.le()[0], "100");
        assert_eq!(TF_BATCH_QUEUE.le().len(), 53);
    }

    #[test]
    fn g6_matches_printf() {
        for (v, s) in [
            (0.0, "0"),
            (1.0, "1"),
            (0.5, "0.5"),
            (0.0001, "0.0001"),
            (0.00001234567, "1.23457e-05"),
            (123456.0, "123456"),
            (1234567.0, "1.23457e+06"),
            (999999.5, "1e+06"),
            (-2.5, "-2.5"),
            (1e100, "1e+100"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(fmt_g6(v), s, "{v}");
        }
    }

    #[test]
    fn observe_uses_le_semantics_and_cumulates() {
        let h = Histogram::new(&TF_LATENCY);
        h.observe_ns(10_000); // exactly 10 µs: the first bucket (le="10")
        h.observe_ns(10_001);
        h.observe_ns(3_000_000_000_000); // 50 min: +Inf
        let (cum, sum) = h.snapshot();
        assert_eq!(cum.len(), 34);
        assert_eq!((cum[0], cum[1], cum[32], cum[33]), (1, 2, 2, 3));
        assert!(cum.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(h.count(), 3);
        assert!((sum - (10.0 + 10.001 + 3e9)).abs() < 1e-3, "{sum}");
        assert_eq!(fmt_value(2.0), "2");
        assert_eq!(fmt_value(0.25), "0.25");
    }
}
