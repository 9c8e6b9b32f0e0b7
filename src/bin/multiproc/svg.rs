//! Draws a [`Layout`] as one self-contained SVG: no script, no stylesheet link, no font or
//! image fetched, so it opens the same in a browser, an editor or a paper.
//!
//! The chart is a group `<g id="chart">` whose attributes give its scale: `data-x0` (the x of
//! the run's first start), `data-px-per-s` (pixels per second), `data-y0` (the top of the first
//! row) and `data-row-h` (the row pitch). Rows go host by host (name order), slot 1 first; each
//! job is a `<rect class="job">` (`class="job failed"`, red, for a failed one) with `data-seq`,
//! `data-host` and `data-slot`, at x = x0 + start × scale, width = runtime × scale (at least
//! [`MIN_BAR`] so instant jobs stay visible), y = y0 + row × row-h, and a `<title>` tooltip.
//! The idle tail is a grey `<rect class="tail">` behind the bars.

use std::fmt::Write;

use crate::plot::Layout;

/// The picture's width in pixels.
const WIDTH: f64 = 1200.0;
/// Left margin (row labels).
const X0: f64 = 150.0;
/// Right margin.
const RIGHT: f64 = 30.0;
/// Top of the first row (below the title and the figures).
const Y0: f64 = 80.0;
/// Row pitch and bar height.
const ROW_H: f64 = 18.0;
const BAR_H: f64 = 14.0;
/// The narrowest bar drawn, in pixels.
pub(crate) const MIN_BAR: f64 = 0.5;
/// Line height of the text below the chart.
const LINE_H: f64 = 16.0;

const OK_FILL: &str = "#4e79a7";
const FAIL_FILL: &str = "#d62728";

/// Escapes text for XML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Cuts `s` to `n` characters, with an ellipsis.
fn cut(s: &str, n: usize) -> String {
    let one_line = s.replace('\n', " ");
    if one_line.chars().count() <= n {
        return one_line;
    }
    let mut t: String = one_line.chars().take(n.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// A host's label: `:` (the local machine in a joblog) reads "local".
fn host_label(host: &str) -> &str {
    if host == ":" { "local" } else { host }
}

/// A "nice" tick step (1, 2 or 5 × 10^k seconds) giving at most ~10 ticks over `span`.
fn tick_step(span: f64) -> f64 {
    if span <= 0.0 {
        return 1.0;
    }
    let raw = span / 10.0;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag)
}

/// The SVG document for `layout`, titled `title`, listing the `slowest` slowest jobs.
pub(crate) fn render(layout: &Layout, title: &str, slowest: usize) -> String {
    let plot_w = WIDTH - X0 - RIGHT;
    let scale = if layout.span > 0.0 {
        plot_w / layout.span
    } else {
        1.0
    };
    let rows = layout.total_slots();
    let chart_h = rows as f64 * ROW_H;
    let axis_y = Y0 + chart_h + 4.0;
    let n_slow = slowest.min(layout.bars.len());
    let list_y = axis_y + 40.0;
    let height = list_y + (n_slow as f64 + 1.0) * LINE_H + 10.0;
    // Row index of the first slot of each host.
    let mut first_row = Vec::with_capacity(layout.hosts.len());
    let mut r = 0;
    for (_, n) in &layout.hosts {
        first_row.push(r);
        r += n;
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">
<rect x="0" y="0" width="{WIDTH}" height="{height:.0}" fill="white"/>"#
    );
    header(&mut s, layout, title);
    let _ = writeln!(
        s,
        r#"<g id="chart" data-x0="{X0}" data-px-per-s="{scale:.6}" data-y0="{Y0}" data-row-h="{ROW_H}" data-t0="{:.3}">"#,
        layout.t0
    );
    // Row backgrounds and labels.
    for (h, (host, n)) in layout.hosts.iter().enumerate() {
        for slot in 1..=*n {
            let y = Y0 + (first_row[h] + slot - 1) as f64 * ROW_H;
            let fill = if (first_row[h] + slot) % 2 == 0 {
                "#f4f4f4"
            } else {
                "#fafafa"
            };
            let _ = writeln!(
                s,
                r#"<rect class="row" x="{X0}" y="{y:.2}" width="{plot_w:.2}" height="{ROW_H}" fill="{fill}"/><text x="{:.2}" y="{:.2}" text-anchor="end">{} slot {slot}</text>"#,
                X0 - 6.0,
                y + ROW_H - 5.0,
                esc(host_label(host))
            );
        }
    }
    // The idle tail, behind the bars.
    let tail_x = X0 + layout.tail_start * scale;
    let _ = writeln!(
        s,
        r##"<rect class="tail" x="{tail_x:.2}" y="{Y0}" width="{:.2}" height="{chart_h:.2}" fill="#bbbbbb" fill-opacity="0.35"><title>idle tail: {:.3} s, {:.3} idle slot-seconds</title></rect>"##,
        (layout.span - layout.tail_start) * scale,
        layout.span - layout.tail_start,
        layout.tail_idle
    );
    for b in &layout.bars {
        let row = first_row[b.host] + b.slot - 1;
        let (class, fill) = if b.failed {
            ("job failed", FAIL_FILL)
        } else {
            ("job", OK_FILL)
        };
        let _ = writeln!(
            s,
            r#"<rect class="{class}" data-seq="{}" data-host="{}" data-slot="{}" x="{:.2}" y="{:.2}" width="{:.2}" height="{BAR_H}" fill="{fill}" stroke="white" stroke-width="0.5"><title>#{} on {} slot {}: {:.3} s, exit {}, signal {}: {}</title></rect>"#,
            b.seq,
            esc(&layout.hosts[b.host].0),
            b.slot,
            X0 + b.start * scale,
            Y0 + row as f64 * ROW_H + (ROW_H - BAR_H) / 2.0,
            (b.runtime * scale).max(MIN_BAR),
            b.seq,
            esc(host_label(&layout.hosts[b.host].0)),
            b.slot,
            b.runtime,
            b.exitval,
            b.signal,
            esc(&cut(&b.command, 200)),
        );
    }
    let _ = writeln!(s, "</g>");
    axis(&mut s, layout.span, scale, axis_y, chart_h);
    slowest_list(&mut s, layout, n_slow, list_y);
    s.push_str("</svg>\n");
    s
}

/// The title and the run's figures.
fn header(s: &mut String, layout: &Layout, title: &str) {
    let failed = layout.bars.iter().filter(|b| b.failed).count();
    let tail = layout.span - layout.tail_start;
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="16" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(
        s,
        r#"<text id="figures" x="10" y="44">{} jobs ({failed} failed) on {} host{}, {} slots; span {:.3} s; utilization {:.1}% ({:.3} busy / {:.3} available slot-seconds)</text>"#,
        layout.bars.len(),
        layout.hosts.len(),
        if layout.hosts.len() == 1 { "" } else { "s" },
        layout.total_slots(),
        layout.span,
        layout.utilization() * 100.0,
        layout.busy,
        layout.available,
    );
    let _ = writeln!(
        s,
        r##"<text id="tail" x="10" y="62">idle tail (after the last job start, grey): {tail:.3} s, {:.3} idle slot-seconds; <tspan fill="{FAIL_FILL}">■ failed</tspan> <tspan fill="{OK_FILL}">■ succeeded</tspan></text>"##,
        layout.tail_idle
    );
}

/// The time axis under the chart.
fn axis(s: &mut String, span: f64, scale: f64, y: f64, chart_h: f64) {
    let step = tick_step(span);
    let _ = writeln!(
        s,
        r##"<g class="axis"><line x1="{X0}" y1="{y:.2}" x2="{:.2}" y2="{y:.2}" stroke="#333"/>"##,
        X0 + span * scale
    );
    let mut k = 0u32;
    loop {
        let t = f64::from(k) * step;
        if t > span + step * 1e-9 {
            break;
        }
        let x = X0 + t * scale;
        let label = if step >= 1.0 {
            format!("{t:.0} s")
        } else {
            format!("{t:.*} s", (-step.log10().floor()) as usize)
        };
        let _ = writeln!(
            s,
            r##"<line x1="{x:.2}" y1="{:.2}" x2="{x:.2}" y2="{:.2}" stroke="#ccc" stroke-width="0.5"/><text x="{x:.2}" y="{:.2}" text-anchor="middle">{label}</text>"##,
            y - chart_h - 4.0,
            y + 4.0,
            y + 18.0,
        );
        k += 1;
    }
    let _ = writeln!(s, "</g>");
}

/// The slowest jobs, slowest first.
fn slowest_list(s: &mut String, layout: &Layout, n: usize, y: f64) {
    if n == 0 {
        return;
    }
    let mut by_time: Vec<_> = layout.bars.iter().collect();
    by_time.sort_by(|a, b| b.runtime.total_cmp(&a.runtime).then(a.seq.cmp(&b.seq)));
    let _ = writeln!(
        s,
        r#"<g id="slowest"><text x="10" y="{y:.2}" font-weight="bold">Slowest {n} jobs</text>"#
    );
    for (i, b) in by_time.iter().take(n).enumerate() {
        let _ = writeln!(
            s,
            r#"<text class="slow" data-seq="{}" x="10" y="{:.2}" font-family="DejaVu Sans Mono, monospace" xml:space="preserve">{:>9.3} s  #{:<6} {} slot {}{}  {}</text>"#,
            b.seq,
            y + (i + 1) as f64 * LINE_H,
            b.runtime,
            b.seq,
            esc(host_label(&layout.hosts[b.host].0)),
            b.slot,
            if b.failed { " FAILED" } else { "" },
            esc(&cut(&b.command, 110)),
        );
    }
    let _ = writeln!(s, "</g>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_control_characters() {
        assert_eq!(esc("a<b>&\"c'\u{1}"), "a&lt;b&gt;&amp;&quot;c&apos; ");
    }

    #[test]
    fn ticks_are_nice() {
        assert_eq!(tick_step(10.0), 1.0);
        assert_eq!(tick_step(95.0), 10.0);
        assert_eq!(tick_step(0.3), 0.05);
        assert_eq!(tick_step(14.0), 2.0);
    }
}
