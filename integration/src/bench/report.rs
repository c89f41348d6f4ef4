//! The pure part of the benchmark: the numbers as the tables print them
//! (`numfmt`-style sizes, ratios, medians), the steps recorded over the
//! rounds, the tables, and the rewriting of a section of BENCHMARKS.md.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

/// One measured time, kept as printed (2 decimals for wall times of
/// commands, 3 for CRI calls) so that medians, ranges and ratios use the
/// printed value, as the tables always did.
#[derive(Debug, Clone, PartialEq)]
pub struct Secs {
    pub text: String,
}

impl Secs {
    /// `secs` printed with `decimals` decimals.
    pub fn new(secs: f64, decimals: usize) -> Self {
        Self {
            text: format!("{secs:.decimals$}"),
        }
    }

    pub fn value(&self) -> f64 {
        self.text.parse().unwrap_or(f64::NAN)
    }
}

/// A size as `numfmt --to=iec --suffix=B --format=%.1f` prints it: powers
/// of 1024, rounded up to one decimal (numfmt rounds away from zero), e.g.
/// `883.7MB`; `-` for an unknown size.
pub fn human(bytes: Option<u64>) -> String {
    let Some(bytes) = bytes else {
        return "-".to_string();
    };
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < 6 {
        value /= 1024.0;
        unit += 1;
    }
    let tenths = (value * 10.0 - 1e-9).ceil();
    let rounded = if tenths > 0.0 { tenths / 10.0 } else { 0.0 };
    let suffix = ["", "K", "M", "G", "T", "P", "E"][unit];
    format!("{rounded:.1}{suffix}B")
}

/// A size as `numfmt --to=iec` prints it: powers of 1024 rounded up, one
/// decimal below 10 (`1.5K`, `182M`), no unit below 1024.
pub fn human_plain(bytes: u64) -> String {
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < 6 {
        value /= 1024.0;
        unit += 1;
    }
    let suffix = ["", "K", "M", "G", "T", "P", "E"][unit];
    if unit == 0 {
        format!("{bytes}")
    } else if value < 10.0 && (value * 10.0 - 1e-9).ceil() < 100.0 {
        format!("{:.1}{suffix}", (value * 10.0 - 1e-9).ceil() / 10.0)
    } else {
        format!("{:.0}{suffix}", (value - 1e-9).ceil())
    }
}

/// KiB (as /proc gives them) in whole MiB; `-` when not measured.
pub fn kib(kib: Option<u64>) -> String {
    match kib {
        Some(k) => format!("{:.0} MiB", k as f64 / 1024.0),
        None => "-".to_string(),
    }
}

/// `a / b` as `1.23x`; `-` without a base.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => format!("{:.2}x", a / b),
        _ => "-".to_string(),
    }
}

/// The median of the rounds: the middle one, the lower of the two middle
/// ones for an even count.
pub fn median(samples: &[Secs]) -> Option<Secs> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.value().total_cmp(&b.value()));
    let n = sorted.len();
    (n > 0).then(|| sorted[n.div_ceil(2) - 1].clone())
}

/// The lowest and highest round, `lo-hi`.
pub fn range(samples: &[Secs]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.value().total_cmp(&b.value()));
    match (sorted.first(), sorted.last()) {
        (Some(lo), Some(hi)) => format!("{}-{}", lo.text, hi.text),
        _ => "-".to_string(),
    }
}

/// What one round of a step measured.
#[derive(Debug, Clone)]
pub struct Measure {
    pub secs: Secs,
    /// Bytes on disk after the step.
    pub disk: Option<u64>,
    /// The daemon's peak RSS in KiB, when a daemon ran.
    pub hwm_kib: Option<u64>,
    pub note: String,
}

/// A step over the rounds.
#[derive(Debug, Clone, Default)]
pub struct Step {
    pub label: String,
    pub times: Vec<Secs>,
    /// The last round's.
    pub disk: Option<u64>,
    /// The highest of the rounds.
    pub hwm_kib: Option<u64>,
    /// The last round's.
    pub note: String,
}

/// Every step recorded, in the order of their first round.
#[derive(Debug, Default)]
pub struct Records {
    order: Vec<String>,
    steps: BTreeMap<String, Step>,
}

impl Records {
    pub fn record(&mut self, id: &str, label: &str, m: Measure) {
        if !self.steps.contains_key(id) {
            self.order.push(id.to_string());
        }
        let step = self.steps.entry(id.to_string()).or_default();
        step.label = label.to_string();
        step.times.push(m.secs.clone());
        step.disk = m.disk;
        step.hwm_kib = match (step.hwm_kib, m.hwm_kib) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        step.note = m.note.clone();
        eprintln!(
            "    {label:<90} {:>7}s  disk {}  daemon peak {}",
            m.secs.text,
            human(m.disk),
            kib(m.hwm_kib)
        );
    }

    pub fn ids(&self) -> &[String] {
        &self.order
    }

    pub fn get(&self, id: &str) -> Option<&Step> {
        self.steps.get(id)
    }

    /// The median time of a step.
    pub fn median(&self, id: &str) -> Option<Secs> {
        self.get(id).and_then(|s| median(&s.times))
    }

    fn median_value(&self, id: &str) -> Option<f64> {
        self.median(id).map(|s| s.value())
    }
}

/// A table cell: `|` escaped for Markdown.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// Median, label and note (with the range of the rounds) of a row.
fn row_fields(step: &Step) -> (Secs, String, String) {
    let t = median(&step.times).unwrap_or_else(|| Secs::new(f64::NAN, 2));
    let sep = if step.note.is_empty() { "" } else { "; " };
    let note = format!("{}{sep}all runs: {} s", step.note, range(&step.times));
    (t, cell(&step.label), cell(&note))
}

/// The ids of the base rows every table compares with.
pub const REGISTRY_CRI: &str = "registry-cri";
pub const FLOOR_PARALLEL: &str = "floor-parallel";

/// The steps recorded, median of the rounds, against (2) and the parallel floor.
pub fn results_table(records: &Records) -> String {
    let base = records.median_value(REGISTRY_CRI);
    let floor = records.median_value(FLOOR_PARALLEL);
    let mut out = String::from(
        "| step | time to runnable | vs (2) | vs (6) parallel | disk (containerd + daemon root) | daemon peak RSS | notes |\n\
         |---|---:|---:|---:|---:|---:|---|",
    );
    for id in records.ids() {
        let step = &records.steps[id];
        let (t, label, note) = row_fields(step);
        out.push_str(&format!(
            "\n| {label} | {} s | {} | {} | {} | {} | {note} |",
            t.text,
            ratio(Some(t.value()), base),
            ratio(Some(t.value()), floor),
            human(step.disk),
            kib(step.hwm_kib),
        ));
    }
    out
}

/// Issue 12's targets: the most a row may take, as a multiple of (2) (of
/// (9) over extracted layers for the reads).
fn mounts_target(id: &str) -> Option<&'static str> {
    Some(match id {
        "mount-plain" | "arrival-docker" => "0.05",
        "pull-plain" | "pull-docker" | "pull-oci" => "0.25",
        "mount-plain-run" => "1.3",
        _ => return None,
    })
}

/// The reads over extracted layers, (9)'s base.
pub const EXTRACT_RUN: &str = "extract-oci-run";

/// --mounts: issue 12's rows with their targets, the reads (`*-run`) last.
pub fn mounts_table(records: &Records) -> String {
    let base = records.median_value(REGISTRY_CRI);
    let floor = records.median_value(FLOOR_PARALLEL);
    let extracted = records.median_value(EXTRACT_RUN);
    let mut ids: Vec<&String> = records
        .ids()
        .iter()
        .filter(|i| !i.ends_with("-run"))
        .collect();
    ids.extend(records.ids().iter().filter(|i| i.ends_with("-run")));
    let mut out = String::from(
        "| step | time to runnable | vs (2) | vs (6) parallel | issue 12's target | disk (containerd + daemon root) | daemon peak RSS | notes |\n\
         |---|---:|---:|---:|---|---:|---:|---|",
    );
    for id in ids {
        let step = &records.steps[id];
        let (t, label, note) = row_fields(step);
        let (r, vs, of) = if id.ends_with("-run") {
            (
                ratio(Some(t.value()), extracted),
                "| - | - |".to_string(),
                "(9) extracted",
            )
        } else {
            let r = ratio(Some(t.value()), base);
            let vs = format!("| {r} | {} |", ratio(Some(t.value()), floor));
            (r, vs, "(2)")
        };
        let want = match mounts_target(id) {
            Some(w) => {
                let met = match (r.trim_end_matches('x').parse::<f64>(), w.parse::<f64>()) {
                    (Ok(r), Ok(w)) if r <= w => "met",
                    _ => "not met",
                };
                format!("at most {w}x of {of}: {r}, {met}")
            }
            None => "-".to_string(),
        };
        out.push_str(&format!(
            "\n| {label} | {} s {vs} {want} | {} | {} | {note} |",
            t.text,
            human(step.disk),
            kib(step.hwm_kib),
        ));
    }
    out
}

/// Prints `report` and, with `write`, puts it into its section of the
/// workspace's BENCHMARKS.md ([`write_section`]).
pub fn publish(write: bool, marker: &str, title: &str, report: &str, first: bool) -> Result<()> {
    println!("\n{report}");
    if write {
        let file = crate::workspace_root().join("BENCHMARKS.md");
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_string(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        let text = write_section(&text, marker, title, report, first);
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        println!("written to BENCHMARKS.md");
    }
    Ok(())
}

/// BENCHMARKS.md with the section `<!-- MARKER:begin --> ... <!--
/// MARKER:end -->` replaced by `## TITLE` and `report`, or added (after the
/// first paragraph with `first`, else at the end), so that each benchmark
/// keeps its own part of the file and the rest stays as written.
pub fn write_section(text: &str, marker: &str, title: &str, report: &str, first: bool) -> String {
    let begin = format!("<!-- {marker}:begin -->");
    let end = format!("<!-- {marker}:end -->");
    let block = format!(
        "{begin}\n## {title}\n\n{}\n{end}",
        report.trim_end_matches('\n')
    );
    if let Some(start) = text.find(&begin) {
        if let Some(len) = text[start..].find(&end) {
            let stop = start + len + end.len();
            return format!("{}{block}{}", &text[..start], &text[stop..]);
        }
    }
    if first {
        if let Some((head, rest)) = text.split_once("\n\n") {
            return format!("{head}\n\n{block}\n\n{rest}");
        }
    }
    format!("{}\n\n{block}\n", text.trim_end_matches('\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> Secs {
        Secs {
            text: text.to_string(),
        }
    }

    fn measure(t: &str, disk: Option<u64>, hwm: Option<u64>, note: &str) -> Measure {
        Measure {
            secs: secs(t),
            disk,
            hwm_kib: hwm,
            note: note.to_string(),
        }
    }

    #[test]
    fn sizes_as_numfmt_prints_them() {
        // Checked against `numfmt --to=iec --suffix=B --format=%.1f`.
        assert_eq!(human(Some(0)), "0.0B");
        assert_eq!(human(Some(512)), "512.0B");
        assert_eq!(human(Some(1023)), "1023.0B");
        assert_eq!(human(Some(1024)), "1.0KB");
        assert_eq!(human(Some(1536)), "1.5KB");
        assert_eq!(human(Some(183_500)), "179.2KB");
        assert_eq!(human(Some(602_112)), "588.0KB");
        assert_eq!(human(Some(905_000_000)), "863.1MB");
        assert_eq!(human(Some(1_500_000_000)), "1.4GB");
        assert_eq!(human(None), "-");
        // `numfmt --to=iec`
        for (n, want) in [
            (0, "0"),
            (1000, "1000"),
            (1536, "1.5K"),
            (10240, "10K"),
            (190_840_832, "182M"),
            (1_048_576, "1.0M"),
            (9_999_999, "9.6M"),
            (10_485_760, "10M"),
        ] {
            assert_eq!(human_plain(n), want, "{n}");
        }
        assert_eq!(kib(Some(35 * 1024 + 100)), "35 MiB");
        assert_eq!(kib(None), "-");
    }

    #[test]
    fn ratios_medians_and_ranges() {
        assert_eq!(ratio(Some(1.426), Some(3.844)), "0.37x");
        assert_eq!(ratio(Some(3.844), Some(3.844)), "1.00x");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "-");
        assert_eq!(ratio(Some(1.0), None), "-");
        let rounds = [secs("4.63"), secs("4.51"), secs("4.61")];
        assert_eq!(median(&rounds).unwrap().text, "4.61");
        assert_eq!(
            median(&rounds[..2]).unwrap().text,
            "4.51",
            "the lower middle"
        );
        assert_eq!(median(&[]), None);
        assert_eq!(range(&rounds), "4.51-4.63");
        assert_eq!(range(&[secs("9.707")]), "9.707-9.707");
        assert_eq!(Secs::new(1.23456, 3).text, "1.235");
        assert_eq!(Secs::new(1.2, 2).text, "1.20");
    }

    #[test]
    fn records_keep_order_last_disk_and_highest_rss() {
        let mut r = Records::default();
        r.record(
            "registry-cri",
            "(2) CRI PullImage",
            measure("4.0", Some(10), None, ""),
        );
        r.record(
            "snap-oci",
            "(5) x | y",
            measure("1.0", Some(5), Some(100), "a"),
        );
        r.record(
            "registry-cri",
            "(2) CRI PullImage",
            measure("2.0", Some(11), None, ""),
        );
        r.record(
            "snap-oci",
            "(5) x | y",
            measure("3.0", Some(6), Some(50), "b"),
        );
        r.record(
            "floor-parallel",
            "(6) floor",
            measure("2.00", Some(7), None, ""),
        );
        assert_eq!(r.ids(), ["registry-cri", "snap-oci", "floor-parallel"]);
        let snap = r.get("snap-oci").unwrap();
        assert_eq!(
            (snap.disk, snap.hwm_kib, snap.note.as_str()),
            (Some(6), Some(100), "b")
        );
        let table = results_table(&r);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(
            lines[1], "|---|---:|---:|---:|---:|---:|---|",
            "the alignment row"
        );
        assert_eq!(
            lines[2],
            "| (2) CRI PullImage | 2.0 s | 1.00x | 1.00x | 11.0B | - | all runs: 2.0-4.0 s |"
        );
        assert_eq!(
            lines[3],
            "| (5) x \\| y | 1.0 s | 0.50x | 0.50x | 6.0B | 0 MiB | b; all runs: 1.0-3.0 s |"
        );
    }

    #[test]
    fn mounts_table_puts_reads_last_with_their_targets() {
        let mut r = Records::default();
        r.record("registry-cri", "(2)", measure("10.0", None, None, ""));
        r.record(
            "extract-oci-run",
            "(9) extracted",
            measure("4.0", None, None, ""),
        );
        r.record("mount-plain", "(8) plain", measure("0.3", None, None, ""));
        r.record(
            "mount-plain-run",
            "(9) mounted",
            measure("2.0", None, None, ""),
        );
        r.record("pull-oci", "(8) oci", measure("3.0", None, None, ""));
        r.record("floor-parallel", "(6)", measure("2.0", None, None, ""));
        let table = mounts_table(&r);
        let rows: Vec<&str> = table.lines().skip(2).collect();
        let labels: Vec<&str> = rows
            .iter()
            .map(|l| l.split(" | ").next().unwrap())
            .collect();
        assert_eq!(
            labels,
            [
                "| (2)",
                "| (8) plain",
                "| (8) oci",
                "| (6)",
                "| (9) extracted",
                "| (9) mounted"
            ]
        );
        assert!(
            rows[1].contains("| 0.03x | 0.15x | at most 0.05x of (2): 0.03x, met |"),
            "{}",
            rows[1]
        );
        assert!(
            rows[2].contains("at most 0.25x of (2): 0.30x, not met"),
            "{}",
            rows[2]
        );
        assert!(rows[3].contains("| 0.20x | 1.00x | - |"), "{}", rows[3]);
        assert!(
            rows[5].contains("2.0 s | - | - | at most 1.3x of (9) extracted: 0.50x, met |"),
            "{}",
            rows[5]
        );
    }

    #[test]
    fn sections_are_replaced_in_place_or_added() {
        let text =
            "# Benchmarks\n\nIntro.\n\n<!-- a:begin -->\n## Old\n\nold\n<!-- a:end -->\n\nAfter.\n";
        let out = write_section(text, "a", "New", "new\n", false);
        assert_eq!(
            out,
            "# Benchmarks\n\nIntro.\n\n<!-- a:begin -->\n## New\n\nnew\n<!-- a:end -->\n\nAfter.\n"
        );
        let out = write_section(text, "b", "B", "b", false);
        assert!(
            out.ends_with("After.\n\n<!-- b:begin -->\n## B\n\nb\n<!-- b:end -->\n"),
            "{out}"
        );
        let out = write_section(text, "c", "C", "c", true);
        assert!(
            out.starts_with(
                "# Benchmarks\n\n<!-- c:begin -->\n## C\n\nc\n<!-- c:end -->\n\nIntro.\n"
            ),
            "{out}"
        );
        let out = write_section("", "d", "D", "d", true);
        assert_eq!(out, "\n\n<!-- d:begin -->\n## D\n\nd\n<!-- d:end -->\n");
        // A report that mentions another marker's text does not confuse it.
        let twice = write_section(
            &write_section(text, "a", "T", "x", false),
            "a",
            "T",
            "y",
            false,
        );
        assert_eq!(twice.matches("<!-- a:begin -->").count(), 1);
        assert!(twice.contains("\ny\n<!-- a:end -->"));
    }
}
