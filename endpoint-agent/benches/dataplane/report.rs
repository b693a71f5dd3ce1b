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

/// Layer B: DNS queries answered per second through one way.
#[derive(Debug, Clone, Serialize)]
pub struct DnsVariant {
    pub variant: String,
    /// The query: `A` (an endpoint's name, one record) or `NXDOMAIN`.
    pub query: String,
    /// Answers back at the client per second (median), the generator slowed down to
    /// about 1.25 times what the server answered under a flood.
    pub qps: f64,
    /// Queries the generator sent per second (median).
    pub offered: f64,
    /// Under the flood (the generator at full speed, first round): answers and
    /// queries per second, and this forwarder's ratio to nsd then.
    pub flood: (f64, f64),
    pub flood_ratio_to_nsd: Option<f64>,
    /// The generator's spin (rounds of an empty loop per query) that paced it.
    pub spin: u32,
    /// Share of the queries sent that were answered (median).
    pub answered: f64,
    /// This forwarder only: to nsd for the same query, round by round (median).
    pub ratio_to_nsd: Option<f64>,
    /// To the swap-MAC-TX echo on the same kind of path, round by round (median).
    pub share_of_ceiling: f64,
    /// Each CPU's busy share while measuring (median).
    pub cpu_busy: Vec<f64>,
    /// nsd only: its processes' CPU (1.0: one CPU), median.
    pub server_cpu: Option<f64>,
    /// UDP datagrams the node's kernel dropped for a full socket buffer, all rounds.
    pub socket_drops: u64,
    /// Answers the node could not pass back to the client (its link's ring full, or
    /// dropped), all rounds: not counted, so not in `qps`.
    pub answers_lost: u64,
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
    /// Layer A, DNS: its own rounds and baselines.
    pub dns_rounds: usize,
    pub dns_program: Vec<ProgramCase>,
    pub pipeline: Vec<PipelineVariant>,
    pub connections: Vec<ConnectionVariant>,
    pub dns: Vec<DnsVariant>,
    pub tcp: Vec<TcpVariant>,
    pub tcp_ratios: Vec<(String, f64)>,
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nLayer A — the program alone (BPF_PROG_RUN, median of {} interleaved rounds)",
            if self.program.is_empty() {
                self.dns_rounds
            } else {
                self.rounds
            }
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
        if !self.dns_program.is_empty() {
            let _ = writeln!(
                out,
                "  DNS, the resolver address answered in place (median of {} interleaved rounds)",
                self.dns_rounds
            );
            for c in &self.dns_program {
                let spread = c
                    .spread
                    .map_or(String::new(), |s| format!("±{:.0}%", s * 100.0));
                let _ = writeln!(
                    out,
                    "    {:<42} {:>9.1} {:>11.1} {:>14.2} {:>8}",
                    c.case, c.ns, c.over_empty, c.ratio_to_swap_mac_tx, spread
                );
            }
        }
        let _ = writeln!(
            out,
            "\nLayer B — packets per second, consumer → node → provider (64-byte frames)"
        );
        if !self.pipeline.is_empty() {
            let _ = writeln!(
                out,
                "  {:<44} {:>9} {:>8} {:>10} {:>12}",
                "variant", "Mpps", "loss", "x nft", "of ceiling"
            );
        }
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
        if !self.dns.is_empty() {
            let _ = writeln!(
                out,
                "  {:<44} {:>9} {:>9} {:>8} {:>7} {:>8} {:>11}",
                "DNS answers/s (sender CPU 0, server CPU 1)",
                "answers/s",
                "sent/s",
                "answered",
                "x nsd",
                "of echo",
                "CPU 0/1"
            );
            for v in &self.dns {
                let cpus = v
                    .cpu_busy
                    .iter()
                    .map(|c| format!("{:.0}", c * 100.0))
                    .collect::<Vec<_>>()
                    .join("/");
                let _ = writeln!(
                    out,
                    "    {:<42} {:>9.0} {:>9.0} {:>7.1}% {:>7} {:>7.0}% {:>10}%",
                    v.variant,
                    v.qps,
                    v.offered,
                    v.answered * 100.0,
                    v.ratio_to_nsd.map_or(String::new(), |r| format!("{r:.2}")),
                    v.share_of_ceiling * 100.0,
                    cpus
                );
            }
            let _ = writeln!(
                out,
                "    (sent: 1.25 times what each answered under a flood, the generator slowed \
                 down; the flood itself, first round:)"
            );
            for v in &self.dns {
                let _ = writeln!(
                    out,
                    "    {:<42} {:>9.0} {:>9.0} {:>8} {:>7}",
                    format!("flood: {}", v.variant),
                    v.flood.0,
                    v.flood.1,
                    "",
                    v.flood_ratio_to_nsd
                        .map_or(String::new(), |r| format!("{r:.2}"))
                );
            }
            for v in self.dns.iter().filter(|v| v.answers_lost > 0) {
                let _ = writeln!(
                    out,
                    "    ({}: {} answers lost on the way back, all rounds)",
                    v.variant, v.answers_lost
                );
            }
            for v in self.dns.iter().filter(|v| v.server_cpu.is_some()) {
                let cpu = v.server_cpu.unwrap_or(0.0);
                let _ = writeln!(
                    out,
                    "    ({}: its processes used {:.0}% of a CPU; its socket dropped {} \
                     queries in all rounds{})",
                    v.variant,
                    cpu * 100.0,
                    v.socket_drops,
                    if cpu < 0.8 {
                        "; less than its CPU: something else ran there, measure again"
                    } else {
                        ""
                    }
                );
            }
        }
        if !self.tcp.is_empty() {
            let _ = writeln!(out, "\nLayer C — real TCP");
        }
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
            .chain(&self.dns_program)
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
        let dns: Vec<(String, f64)> = self
            .dns
            .iter()
            .map(|v| (v.variant.clone(), v.qps / 1000.0))
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
                "Layer B: DNS queries answered, thousands/s (higher is better)",
                dns,
                "k/s",
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
                    || name.starts_with("DNS query")
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
