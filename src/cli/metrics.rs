//! Prometheus metrics of unattended runs, in the text exposition format
//! (version 0.0.4): written atomically to a file for node_exporter's
//! textfile collector, and served on a loopback address by `watch`.
//!
//! Every metric carries a `fleet` label. The README ("Metrics") documents
//! each one; [`render`] is the only place they are named.

use super::unattended::{Pass, Verdict};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Disruption classes, each always given a sample (0 when none), so a
/// dashboard's series never appear and vanish.
const CLASSES: [&str; 4] = ["none", "live", "restart", "destructive"];

/// What the metrics describe: the last pass of each host (or one pass of
/// the whole fleet), how long the last Dhall evaluation took, and, from
/// `watch`, how many passes it ran.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The fleet's name.
    pub fleet: String,
    /// The last pass per scope (a host name, or `*` for the whole fleet).
    pub passes: BTreeMap<String, Pass>,
    /// Seconds the last evaluation of fleet.dhall took (0 from the cache).
    pub eval_seconds: f64,
    /// Passes by verdict since `watch` started (absent for one-shot runs).
    pub runs_total: Option<BTreeMap<&'static str, u64>>,
}

/// Escapes a label value: backslash, double quote and newline.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text of `s`.
pub fn render(s: &Snapshot) -> String {
    let fleet = label(&s.fleet);
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            let extra = if labels.is_empty() {
                String::new()
            } else {
                format!(",{labels}")
            };
            out.push_str(&format!("{name}{{fleet=\"{fleet}\"{extra}}} {value}\n"));
        }
    };
    let passes: Vec<&Pass> = s.passes.values().collect();
    let last = passes.iter().max_by_key(|p| p.finished_at);
    let verdict = passes
        .iter()
        .map(|p| p.verdict)
        .reduce(Verdict::worst)
        .unwrap_or(Verdict::Error);
    let sum = |f: &dyn Fn(&Pass) -> u64| passes.iter().map(|p| f(p)).sum::<u64>();
    family(
        "virtfleet_last_run_timestamp_seconds",
        "gauge",
        "Unix time the last unattended run finished.",
        vec![(String::new(), last.map_or(0, |p| p.finished_at).to_string())],
    );
    family(
        "virtfleet_last_run_outcome",
        "gauge",
        "1 for the outcome of the last unattended run (the worst over hosts), 0 for the others.",
        Verdict::ALL
            .iter()
            .map(|v| {
                (
                    format!("outcome=\"{}\"", v.as_str()),
                    u8::from(*v == verdict).to_string(),
                )
            })
            .collect(),
    );
    family(
        "virtfleet_last_run_duration_seconds",
        "gauge",
        "Wall time of the last unattended run: observe, apply, observe again.",
        vec![(
            String::new(),
            format!("{:.3}", last.map_or(0.0, |p| p.duration.as_secs_f64())),
        )],
    );
    family(
        "virtfleet_dhall_eval_seconds",
        "gauge",
        "Wall time of the last evaluation of the fleet file (0 when it came from the evaluation cache).",
        vec![(String::new(), format!("{:.3}", s.eval_seconds))],
    );
    let by_class = |f: &dyn Fn(&Pass) -> &BTreeMap<&'static str, u64>| {
        CLASSES
            .iter()
            .map(|c| {
                let n: u64 = passes
                    .iter()
                    .map(|p| f(p).get(c).copied().unwrap_or(0))
                    .sum();
                (format!("class=\"{c}\""), n.to_string())
            })
            .collect::<Vec<_>>()
    };
    family(
        "virtfleet_changes_applied",
        "gauge",
        "Changes the last run carried out, by disruption class.",
        by_class(&|p| &p.applied),
    );
    family(
        "virtfleet_changes_pending",
        "gauge",
        "Changes left pending after the last run for lack of permission, by disruption class.",
        by_class(&|p| &p.pending),
    );
    family(
        "virtfleet_changes_failed",
        "gauge",
        "Changes that failed in the last run.",
        vec![(String::new(), sum(&|p| p.failed).to_string())],
    );
    family(
        "virtfleet_drift",
        "gauge",
        "Differences between fleet.dhall and the hosts the last run's first observation found (applied or pending).",
        vec![(String::new(), sum(&|p| p.drift).to_string())],
    );
    family(
        "virtfleet_unreachable_hosts",
        "gauge",
        "Hosts the last run could not observe.",
        vec![(
            String::new(),
            sum(&|p| p.unreachable.len() as u64).to_string(),
        )],
    );
    if let Some(total) = &s.runs_total {
        family(
            "virtfleet_runs_total",
            "counter",
            "Passes `watch` ran since it started, by outcome.",
            Verdict::ALL
                .iter()
                .map(|v| {
                    (
                        format!("outcome=\"{}\"", v.as_str()),
                        total.get(v.as_str()).copied().unwrap_or(0).to_string(),
                    )
                })
                .collect(),
        );
    }
    out
}

/// Writes `text` to `path` atomically: a temporary file in the same
/// directory, flushed, made world-readable (node_exporter runs as its own
/// user) and renamed over `path`, so a reader never sees half a file.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".virtfleet-metrics")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pass(verdict: Verdict) -> Pass {
        let mut p = Pass::failed_early(String::new());
        p.verdict = verdict;
        p.error = None;
        p.finished_at = 1_700_000_000;
        p.duration = Duration::from_millis(1500);
        p
    }

    #[test]
    fn worst_outcome_wins_and_every_class_has_a_sample() {
        let mut s = Snapshot {
            fleet: "a\"b".into(),
            ..Snapshot::default()
        };
        let mut h1 = pass(Verdict::Converged);
        h1.applied.insert("live", 2);
        s.passes.insert("h1".into(), h1);
        let mut h2 = pass(Verdict::Pending);
        h2.pending.insert("restart", 1);
        s.passes.insert("h2".into(), h2);
        let text = render(&s);
        assert!(
            text.contains("virtfleet_last_run_outcome{fleet=\"a\\\"b\",outcome=\"pending\"} 1\n")
        );
        assert!(text.contains("outcome=\"converged\"} 0\n"));
        assert!(text.contains("virtfleet_changes_applied{fleet=\"a\\\"b\",class=\"live\"} 2\n"));
        assert!(
            text.contains("virtfleet_changes_applied{fleet=\"a\\\"b\",class=\"destructive\"} 0\n")
        );
        assert!(text.contains("virtfleet_changes_pending{fleet=\"a\\\"b\",class=\"restart\"} 1\n"));
        assert!(text.contains("virtfleet_last_run_duration_seconds{fleet=\"a\\\"b\"} 1.500\n"));
        assert!(!text.contains("virtfleet_runs_total"));
    }

    #[test]
    fn atomic_write_replaces_the_file_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("virtfleet.prom");
        write_atomic(&p, "one\n").unwrap();
        write_atomic(&p, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
