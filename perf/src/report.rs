//! Figures: per-core and total IOPS, MiB/s, latency percentiles in µs, the
//! harness's own CPU time; as a table (the layout `spdk_nvme_perf` users
//! know), as JSON with the full histogram, and as an SVG latency plot.

use crate::workload::WorkloadOpts;
use engine::metrics::LatencyHistogram;
use serde_json::{json, Value};
use std::fmt::Write as _;

/// Percentiles every report lists.
pub const PERCENTILES: [f64; 5] = [50.0, 90.0, 99.0, 99.9, 99.99];

/// What one core measured.
#[derive(Clone)]
pub struct CoreResult {
    pub core: u32,
    pub ios: u64,
    pub reads: u64,
    pub writes: u64,
    pub bytes: u64,
    pub errors: u64,
    pub verify_failures: u64,
    pub first_error: Option<String>,
    pub elapsed_ns: u64,
    pub harness_cpu_ns: u64,
    pub hist: LatencyHistogram,
}

impl CoreResult {
    pub fn iops(&self) -> f64 {
        if self.elapsed_ns == 0 {
            0.0
        } else {
            self.ios as f64 * 1e9 / self.elapsed_ns as f64
        }
    }
    pub fn mib_s(&self) -> f64 {
        if self.elapsed_ns == 0 {
            0.0
        } else {
            self.bytes as f64 * 1e9 / self.elapsed_ns as f64 / (1 << 20) as f64
        }
    }
}

/// A run's figures: per core and total.
#[derive(Clone)]
pub struct Report {
    pub label: String,
    pub opts: WorkloadOpts,
    pub cores: Vec<CoreResult>,
    pub total: CoreResult,
}

impl Report {
    pub fn new(label: &str, opts: &WorkloadOpts, cores: Vec<CoreResult>) -> Report {
        let mut total = CoreResult {
            core: u32::MAX,
            ios: 0,
            reads: 0,
            writes: 0,
            bytes: 0,
            errors: 0,
            verify_failures: 0,
            first_error: None,
            elapsed_ns: 0,
            harness_cpu_ns: 0,
            hist: LatencyHistogram::new(),
        };
        for c in &cores {
            total.ios += c.ios;
            total.reads += c.reads;
            total.writes += c.writes;
            total.bytes += c.bytes;
            total.errors += c.errors;
            total.verify_failures += c.verify_failures;
            total.harness_cpu_ns += c.harness_cpu_ns;
            total.elapsed_ns = total.elapsed_ns.max(c.elapsed_ns);
            if total.first_error.is_none() {
                total.first_error = c.first_error.clone();
            }
            total.hist.merge(&c.hist);
        }
        // Total IOPS is the sum of per-core rates (cores run concurrently).
        let iops: f64 = cores.iter().map(|c| c.iops()).sum();
        if iops > 0.0 {
            total.elapsed_ns = (total.ios as f64 * 1e9 / iops) as u64;
        }
        Report {
            label: label.to_string(),
            opts: opts.clone(),
            cores,
            total,
        }
    }

    /// The table: one row per core and a total, then the percentile summary
    /// (`latency_summary`, `-L`) and the histogram (`latency_histogram`, `-LL`).
    pub fn table(&self, latency_summary: bool, latency_histogram: bool) -> String {
        let mut s = String::new();
        let o = &self.opts;
        let _ = writeln!(
            s,
            "{}: {} {} B QD {} for {:.1} s{}",
            self.label,
            o.pattern.name(),
            o.io_size_bytes,
            o.queue_depth,
            o.time.as_secs_f64(),
            if o.verify { " (verify)" } else { "" }
        );
        let _ = writeln!(
            s,
            "{:<24} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
            "", "IOPS", "MiB/s", "avg us", "min us", "p50 us", "p99 us", "max us", "cpu %"
        );
        let mut row = |name: String, c: &CoreResult| {
            let cpu = if c.elapsed_ns > 0 {
                100.0 * c.harness_cpu_ns as f64 / c.elapsed_ns as f64
            } else {
                0.0
            };
            let _ = writeln!(
                s,
                "{:<24} {:>12.0} {:>10.1} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>8.0}",
                name,
                c.iops(),
                c.mib_s(),
                c.hist.mean_us(),
                c.hist.min_us(),
                c.hist.percentile_us(50.0),
                c.hist.percentile_us(99.0),
                c.hist.max_us(),
                cpu
            );
        };
        for c in &self.cores {
            row(format!("core {}", c.core), c);
        }
        row("Total".to_string(), &self.total);
        if self.total.errors > 0 || self.total.verify_failures > 0 {
            let _ = writeln!(
                s,
                "ERRORS: {} I/O errors, {} verification failures; first: {}",
                self.total.errors,
                self.total.verify_failures,
                self.total.first_error.as_deref().unwrap_or("-")
            );
        }
        if latency_summary {
            let _ = writeln!(s, "Latency summary (us):");
            for p in PERCENTILES {
                let _ = writeln!(s, "  {:>7}% : {:>12.3}", p, self.total.hist.percentile_us(p));
            }
        }
        if latency_histogram {
            let _ = writeln!(
                s,
                "Latency histogram:\n  {:>14} {:>10} {:>12} {:>10}",
                "<= us", "count", "cumulative", ""
            );
            for (us, count, cum) in self.total.hist.buckets_us() {
                let _ = writeln!(s, "  {:>14.3} {:>10} {:>11.4}%", us, count, cum * 100.0);
            }
        }
        s
    }

    fn core_json(c: &CoreResult, full: bool) -> Value {
        let mut v = json!({
            "ios": c.ios,
            "reads": c.reads,
            "writes": c.writes,
            "bytes": c.bytes,
            "errors": c.errors,
            "verify_failures": c.verify_failures,
            "elapsed_s": c.elapsed_ns as f64 / 1e9,
            "iops": c.iops(),
            "mib_s": c.mib_s(),
            "harness_cpu_s": c.harness_cpu_ns as f64 / 1e9,
            "latency_us": {
                "avg": c.hist.mean_us(),
                "min": c.hist.min_us(),
                "max": c.hist.max_us(),
                "p50": c.hist.percentile_us(50.0),
                "p90": c.hist.percentile_us(90.0),
                "p99": c.hist.percentile_us(99.0),
                "p99_9": c.hist.percentile_us(99.9),
                "p99_99": c.hist.percentile_us(99.99),
            },
        });
        if c.core != u32::MAX {
            v["core"] = c.core.into();
        }
        if let Some(e) = &c.first_error {
            v["first_error"] = e.clone().into();
        }
        if full {
            v["histogram_us"] = c
                .hist
                .buckets_us()
                .into_iter()
                .map(|(us, n, cum)| json!([us, n, cum]))
                .collect::<Vec<_>>()
                .into();
        }
        v
    }

    /// JSON: options, per-core figures, total with its full histogram as
    /// `[upper_bound_us, count, cumulative_fraction]` rows.
    pub fn json(&self) -> Value {
        json!({
            "label": self.label,
            "workload": serde_json::to_value(&self.opts).unwrap_or(Value::Null),
            "cores": self.cores.iter().map(|c| Self::core_json(c, false)).collect::<Vec<_>>(),
            "total": Self::core_json(&self.total, true),
        })
    }
}

/// An SVG of latency percentile curves (x: latency µs, log scale; y:
/// percentile on a "nines" scale so the tail is readable), one curve per
/// report, so two runs compare at a glance.
pub fn plot_svg(reports: &[&Report]) -> String {
    let (w, h, ml, mr, mt, mb) = (900.0, 520.0, 80.0, 30.0, 50.0, 60.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let mut lo = f64::MAX;
    let mut hi = 0f64;
    for r in reports {
        lo = lo.min(r.total.hist.min_us().max(0.01));
        hi = hi.max(r.total.hist.max_us());
    }
    if !(lo.is_finite() && hi > 0.0) {
        lo = 1.0;
        hi = 10.0;
    }
    let (lx0, lx1) = (lo.log10().floor(), (hi.log10().ceil()).max(lo.log10().floor() + 1.0));
    let nines_max = 5.0; // up to 99.999%
    let x = |us: f64| ml + (us.max(lo).log10() - lx0) / (lx1 - lx0) * pw;
    let y = |frac: f64| {
        let nines = (-(1.0 - frac.min(0.999_99)).log10()).clamp(0.0, nines_max);
        mt + ph - nines / nines_max * ph
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" font-size="16" text-anchor="middle">Latency percentiles (µs, log scale)</text>"#,
        w / 2.0
    );
    for d in (lx0 as i32)..=(lx1 as i32) {
        let xv = ml + (d as f64 - lx0) / (lx1 - lx0) * pw;
        let _ = writeln!(
            s,
            r##"<line x1="{xv}" y1="{mt}" x2="{xv}" y2="{}" stroke="#ddd"/>"##,
            mt + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{xv}" y="{}" text-anchor="middle">{}</text>"#,
            mt + ph + 18.0,
            10f64.powi(d)
        );
    }
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"].iter().enumerate() {
        let yv = mt + ph - i as f64 / nines_max * ph;
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" y1="{yv}" x2="{}" y2="{yv}" stroke="#ddd"/>"##,
            ml + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{label}</text>"#,
            ml - 6.0,
            yv + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">latency (µs)</text>"#,
        ml + pw / 2.0,
        h - 15.0
    );
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
    for (k, r) in reports.iter().enumerate() {
        let c = colors[k % colors.len()];
        let mut pts = String::new();
        let mut prev = 0.0;
        for (us, _, cum) in r.total.hist.buckets_us() {
            let _ = write!(pts, "{:.1},{:.1} {:.1},{:.1} ", x(us), y(prev), x(us), y(cum));
            prev = cum;
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{pts}"/>"#
        );
        let ly = mt + 16.0 + k as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="14" height="4" fill="{c}"/><text x="{}" y="{}">{} — p50 {:.2} µs, p99 {:.2} µs, {:.0} IOPS</text>"#,
            ml + 10.0,
            ly - 4.0,
            ml + 30.0,
            ly,
            xml_escape(&r.label),
            r.total.hist.percentile_us(50.0),
            r.total.hist.percentile_us(99.0),
            r.total.iops()
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="black"/></svg>"#
    );
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Two reports side by side with the ratio b/a of each figure.
pub fn compare_table(a: &Report, b: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<14} {:>24} {:>24} {:>10}",
        "",
        trunc(&a.label),
        trunc(&b.label),
        "b/a"
    );
    let rows: [(&str, f64, f64); 7] = [
        ("IOPS", a.total.iops(), b.total.iops()),
        ("MiB/s", a.total.mib_s(), b.total.mib_s()),
        ("avg us", a.total.hist.mean_us(), b.total.hist.mean_us()),
        (
            "p50 us",
            a.total.hist.percentile_us(50.0),
            b.total.hist.percentile_us(50.0),
        ),
        (
            "p99 us",
            a.total.hist.percentile_us(99.0),
            b.total.hist.percentile_us(99.0),
        ),
        (
            "p99.9 us",
            a.total.hist.percentile_us(99.9),
            b.total.hist.percentile_us(99.9),
        ),
        ("max us", a.total.hist.max_us(), b.total.hist.max_us()),
    ];
    for (name, x, y) in rows {
        let ratio = if x > 0.0 { y / x } else { f64::NAN };
        let _ = writeln!(s, "{name:<14} {x:>24.2} {y:>24.2} {ratio:>10.3}");
    }
    s
}

fn trunc(s: &str) -> String {
    s.chars().take(24).collect()
}
