//! The results: a table on stdout, a JSON file and an SVG chart.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

/// Layer A: one case of the program alone.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramCase {
    pub case: String,
    /// Median ns per packet (restore cost subtracted where a wrapper restored the frame).
    pub ns: f64,
    pub over_empty: f64,
    pub ratio_to_swap_mac_tx: f64,
    /// Scaling rows: how far the rounds' ratios to swap-MAC-TX lie from their median
    /// (half the range between the 10th and 90th percentiles, as a share of it).
    pub spread: Option<f64>,
}

/// Layer B: one variant of the namespace pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineVariant {
    pub variant: String,
    pub mpps: f64,
    pub loss: f64,
    pub ratio_to_nft: f64,
    pub share_of_redirect_ceiling: f64,
}

/// Layer B: new connections per second through one way (SYN → SYN-ACK reflector).
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionVariant {
    pub variant: String,
    /// SYN-ACKs back at the consumer per second: handshakes carried both ways (median).
    pub per_second: f64,
    /// Share of SYNs whose SYN-ACK did not come back (median).
    pub loss: f64,
    pub ratio_to_nft: f64,
    /// SYNs per round, each with a new tuple.
    pub syns_per_round: u32,
    /// Each round's connections per second, in order (the forwarder's table fills from
    /// round to round; nftables' is emptied before each).
    pub per_round: Vec<f64>,
}

/// Layer C: one TCP measurement.
#[derive(Debug, Clone, Serialize)]
pub struct TcpVariant {
    pub measure: String,
    pub variant: String,
    pub value: f64,
    pub unit: String,
    /// Attempts that failed (connections per second only).
    pub failed: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub kernel: String,
    pub cpus: usize,
    pub rounds: usize,
    pub program: Vec<ProgramCase>,
    pub scaling: Vec<ProgramCase>,
    pub pipeline: Vec<PipelineVariant>,
    pub connections: Vec<ConnectionVariant>,
    pub tcp: Vec<TcpVariant>,
    pub tcp_ratios: Vec<(String, f64)>,
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nLayer A — the program alone (BPF_PROG_RUN, median of {} interleaved rounds)",
            self.rounds
        );
        let _ = writeln!(
            out,
            "  {:<44} {:>9} {:>11} {:>14} {:>8}",
            "case", "ns/pkt", "over empty", "x swap-MAC-TX", "spread"
        );
        for c in self.program.iter().chain(&self.scaling) {
            let spread = c
                .spread
                .map_or(String::new(), |s| format!("±{:.0}%", s * 100.0));
            let _ = writeln!(
                out,
                "  {:<44} {:>9.1} {:>11.1} {:>14.2} {:>8}",
                c.case, c.ns, c.over_empty, c.ratio_to_swap_mac_tx, spread
            );
        }
        if let (Some(low), Some(high)) = (
            self.scaling
                .iter()
                .map(|c| c.ratio_to_swap_mac_tx)
                .reduce(f64::min),
            self.scaling
                .iter()
                .map(|c| c.ratio_to_swap_mac_tx)
                .reduce(f64::max),
        ) {
            let _ = writeln!(
                out,
                "  scaling: the established path's dearest row costs {:.0}% more than its cheapest",
                (high / low - 1.0) * 100.0
            );
        }
        let _ = writeln!(
            out,
            "\nLayer B — packets per second, consumer → node → provider (64-byte frames)"
        );
        let _ = writeln!(
            out,
            "  {:<44} {:>9} {:>8} {:>10} {:>12}",
            "variant", "Mpps", "loss", "x nft", "of ceiling"
        );
        for v in &self.pipeline {
            let _ = writeln!(
                out,
                "  {:<44} {:>9.3} {:>7.1}% {:>10.2} {:>11.0}%",
                v.variant,
                v.mpps,
                v.loss * 100.0,
                v.ratio_to_nft,
                v.share_of_redirect_ceiling * 100.0
            );
        }
        if let Some(first) = self.connections.first() {
            let _ = writeln!(
                out,
                "  {:<44} {:>9} {:>8} {:>10}",
                "new connections/s (SYN → SYN-ACK reflector)", "conn/s", "loss", "x nft"
            );
            for v in &self.connections {
                let _ = writeln!(
                    out,
                    "    {:<42} {:>9.0} {:>7.1}% {:>10.2}",
                    v.variant,
                    v.per_second,
                    v.loss * 100.0,
                    v.ratio_to_nft
                );
            }
            let _ = writeln!(
                out,
                "    ({} SYNs a round, each a new tuple, left half-open)",
                first.syns_per_round
            );
        }
        let _ = writeln!(out, "\nLayer C — real TCP");
        for v in &self.tcp {
            let _ = writeln!(
                out,
                "  {:<28} {:<32} {:>10.1} {}",
                v.measure, v.variant, v.value, v.unit
            );
        }
        for (what, ratio) in &self.tcp_ratios {
            let _ = writeln!(out, "  {what:<61} {ratio:>10.2}x");
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            serde_json::to_string_pretty(self).map_err(std::io::Error::other)?,
        )
    }

    /// Panels of horizontal bars: ns per packet, Mpps, new connections/s, TCP.
    pub fn write_svg(&self, path: &Path) -> std::io::Result<()> {
        let a: Vec<(String, f64)> = self
            .program
            .iter()
            .map(|c| (c.case.clone(), c.ns))
            .collect();
        let b: Vec<(String, f64)> = self
            .pipeline
            .iter()
            .map(|v| (v.variant.clone(), v.mpps))
            .collect();
        let connections: Vec<(String, f64)> = self
            .connections
            .iter()
            .map(|v| (v.variant.clone(), v.per_second))
            .collect();
        let tcp = |unit: &str| -> Vec<(String, f64)> {
            self.tcp
                .iter()
                .filter(|v| v.unit == unit)
                .map(|v| (v.variant.clone(), v.value))
                .collect()
        };
        let panels = [
            (
                "Layer A: ns per packet, BPF_PROG_RUN (lower is better)",
                a,
                "ns",
            ),
            (
                "Layer B: Mpps, consumer → node → provider, 64-byte frames (higher is better)",
                b,
                "Mpps",
            ),
            (
                "Layer B: new connections/s, SYN → SYN-ACK reflector (higher is better)",
                connections,
                "conn/s",
            ),
            (
                "Layer C: TCP connections per second (higher is better)",
                tcp("conn/s"),
                "conn/s",
            ),
            (
                "Layer C: bulk TCP (higher is better)",
                tcp("Gbit/s"),
                "Gbit/s",
            ),
        ];
        let row = 22.0;
        let width = 860.0;
        let label = 330.0;
        let mut svg = String::new();
        let height: f64 = panels
            .iter()
            .map(|(_, rows, _)| 40.0 + row * rows.len() as f64)
            .sum::<f64>()
            + 20.0;
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            svg,
            r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
        );
        let mut y = 20.0;
        for (title, rows, unit) in &panels {
            let _ = writeln!(
                svg,
                r#"<text x="10" y="{y}" font-weight="bold">{title}</text>"#
            );
            y += 12.0;
            let max = rows.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1e-9);
            for (name, value) in rows {
                let bar = (width - label - 140.0) * value / max;
                let colour = if name.contains("forwarder")
                    || name.contains("established")
                    || name.contains("reply")
                    || name.contains("new flow")
                    || name.contains("pass-through")
                    || name.contains("malformed")
                {
                    "#2b7bb9"
                } else {
                    "#9aa5ad"
                };
                let _ = writeln!(
                    svg,
                    r#"<text x="10" y="{}">{}</text>"#,
                    y + 14.0,
                    escape(name)
                );
                let _ = writeln!(
                    svg,
                    r#"<rect x="{label}" y="{}" width="{bar:.1}" height="14" fill="{colour}"/>"#,
                    y + 3.0
                );
                let _ = writeln!(
                    svg,
                    r#"<text x="{:.1}" y="{}">{value:.2} {unit}</text>"#,
                    label + bar + 5.0,
                    y + 14.0
                );
                y += row;
            }
            y += 28.0;
        }
        svg.push_str("</svg>\n");
        std::fs::write(path, svg)
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The median of `values`.
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

/// The value `share` of the way up the sorted `values`.
pub fn percentile(values: &[f64], share: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * share).round() as usize]
}
