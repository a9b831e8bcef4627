//! Human output by default, JSON Lines with `--json`.

use std::io::{self, Write};

use std::fmt::Display;

use serde::Serialize;

/// How a tool prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line of text per event, aligned tables.
    Human,
    /// One JSON object per line (JSON Lines).
    Json,
}

/// Where events and summaries go.
#[derive(Debug)]
pub struct Out<W: Write> {
    w: W,
    format: Format,
}

impl<W: Write> Out<W> {
    /// Print to `w` in `format`.
    pub fn new(w: W, format: Format) -> Self {
        Out { w, format }
    }

    /// The format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// One event modelled once: its `Display` for people, its serde form
    /// (an object with a `"kind"` tag) for machines.
    pub fn event<E: Serialize + Display>(&mut self, e: &E) -> io::Result<()> {
        match self.format {
            Format::Human => writeln!(self.w, "{e}")?,
            Format::Json => {
                serde_json::to_writer(&mut self.w, e)?;
                writeln!(self.w)?;
            }
        }
        self.w.flush()
    }

    /// A record only machines get (people get it in a table printed with
    /// [`Out::note`]).
    pub fn record<E: Serialize>(&mut self, e: &E) -> io::Result<()> {
        if self.format == Format::Json {
            serde_json::to_writer(&mut self.w, e)?;
            writeln!(self.w)?;
            self.w.flush()?;
        }
        Ok(())
    }

    /// Text only shown to people (headers, notes).
    pub fn note(&mut self, human: &str) -> io::Result<()> {
        if self.format == Format::Human {
            writeln!(self.w, "{human}")?;
            self.w.flush()?;
        }
        Ok(())
    }

    /// The writer back (tests).
    pub fn into_inner(self) -> W {
        self.w
    }
}

/// Render rows as a left-aligned table with a header (numbers right-aligned).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = width.get_mut(i) {
                *w = (*w).max(cell.len());
            }
        }
    }
    let numeric = |i: usize| {
        rows.iter().all(|r| {
            r.get(i)
                .is_some_and(|c| c.chars().all(|ch| ch.is_ascii_digit()))
        })
    };
    let mut s = String::new();
    let line = |cells: Vec<&str>, s: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = width.get(i).copied().unwrap_or(0);
                if numeric(i) && !rows.is_empty() {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        s.push_str(parts.join("  ").trim_end());
        s.push('\n');
    };
    line(header.to_vec(), &mut s);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut s);
    }
    s
}
