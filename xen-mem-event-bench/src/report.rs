//! The one output table (markdown) and its machine form (`--json`).

use std::fmt::Write as _;

/// A value of the JSON output.
#[derive(Debug, Clone)]
pub enum Json {
    Num(f64),
    Int(u64),
    Str(String),
    Bool(bool),
}

impl Json {
    fn write(&self, out: &mut String) {
        match self {
            Json::Num(v) if v.is_finite() => {
                let _ = write!(out, "{v}");
            }
            Json::Num(_) => out.push_str("null"),
            Json::Int(v) => {
                let _ = write!(out, "{v}");
            }
            Json::Str(s) => write_str(out, s),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        }
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One row of the table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub section: &'static str,
    pub config: String,
    pub result: String,
    pub ratio: String,
    pub target: String,
    pub metrics: Vec<(&'static str, Json)>,
}

impl Row {
    pub fn new(section: &'static str, config: impl Into<String>) -> Row {
        Row {
            section,
            config: config.into(),
            ..Row::default()
        }
    }
    pub fn result(mut self, s: impl Into<String>) -> Row {
        self.result = s.into();
        self
    }
    pub fn ratio(mut self, s: impl Into<String>) -> Row {
        self.ratio = s.into();
        self
    }
    pub fn target(mut self, s: impl Into<String>) -> Row {
        self.target = s.into();
        self
    }
    pub fn num(mut self, k: &'static str, v: f64) -> Row {
        self.metrics.push((k, Json::Num(v)));
        self
    }
    pub fn int(mut self, k: &'static str, v: u64) -> Row {
        self.metrics.push((k, Json::Int(v)));
        self
    }
    pub fn flag(mut self, k: &'static str, v: bool) -> Row {
        self.metrics.push((k, Json::Bool(v)));
        self
    }
    pub fn text(mut self, k: &'static str, v: impl Into<String>) -> Row {
        self.metrics.push((k, Json::Str(v.into())));
        self
    }
}

/// Everything measured in one run.
#[derive(Debug, Default)]
pub struct Report {
    pub mode: &'static str,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub checks_passed: u32,
    pub checks_failed: Vec<String>,
    pub elapsed_s: f64,
    /// The cross-CPU round trip the run ran under: median, min, max (ns).
    pub placement_ns: Option<(f64, f64, f64)>,
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## xen-mem-event benchmark ({} run, {:.1} s, every figure from this run)\n",
            self.mode, self.elapsed_s
        );
        if let Some((m, lo, hi)) = self.placement_ns {
            let _ = writeln!(
                out,
                "Placement: cross-CPU cache-line round trip {m:.0} ns (median; \
                    {lo:.0}–{hi:.0} ns over the run).\n"
            );
        }
        out.push_str("| § | Configuration | Result | Ratio | Target |\n");
        out.push_str("|---|---|---|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                cell(r.section),
                cell(&r.config),
                cell(&r.result),
                cell(&r.ratio),
                cell(&r.target)
            );
        }
        if !self.notes.is_empty() {
            out.push_str("\nNotes:\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }

    pub fn json(&self) -> String {
        let mut out = String::new();
        out.push_str("{\n  \"mode\": ");
        write_str(&mut out, self.mode);
        let _ = write!(
            out,
            ",\n  \"elapsed_s\": {:.3},\n  \"placement_ns\": ",
            self.elapsed_s
        );
        match self.placement_ns {
            Some((m, lo, hi)) => {
                out.push('[');
                for (i, v) in [m, lo, hi].into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    Json::Num(v).write(&mut out);
                }
                out.push(']');
            }
            None => out.push_str("null"),
        }
        out.push_str(",\n  \"rows\": [");
        for (i, r) in self.rows.iter().enumerate() {
            out.push_str(if i == 0 { "\n    {" } else { ",\n    {" });
            for (k, v) in [
                ("section", r.section),
                ("config", &r.config),
                ("result", &r.result),
                ("ratio", &r.ratio),
                ("target", &r.target),
            ] {
                write_str(&mut out, k);
                out.push_str(": ");
                write_str(&mut out, v);
                out.push_str(", ");
            }
            out.push_str("\"metrics\": {");
            for (j, (k, v)) in r.metrics.iter().enumerate() {
                if j > 0 {
                    out.push_str(", ");
                }
                write_str(&mut out, k);
                out.push_str(": ");
                v.write(&mut out);
            }
            out.push_str("}}");
        }
        out.push_str("\n  ],\n  \"checks\": {\"passed\": ");
        let _ = write!(out, "{}, \"failed\": [", self.checks_passed);
        for (i, f) in self.checks_failed.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            write_str(&mut out, f);
        }
        out.push_str("]},\n  \"notes\": [");
        for (i, n) in self.notes.iter().enumerate() {
            out.push_str(if i == 0 { "\n    " } else { ",\n    " });
            write_str(&mut out, n);
        }
        out.push_str("\n  ]\n}\n");
        out
    }
}
