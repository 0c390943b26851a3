//! Turning per-round figures into the printed table and `latest.json`.
//!
//! Every figure is first a per-round value (one per target); a cell shows the
//! median of the rounds and their spread (min–max). "vs direct" compares
//! each round with the direct run of the same round (added ms, or the ratio),
//! then takes the median and spread of those per-round comparisons.

use serde_json::{Value, json};

/// The targets, in table order; index 0 is the baseline, the last the peer
/// (LiteLLM, only in S1, S2 and S4, and left out with `--no-peer`).
pub const TARGETS: [&str; 4] = ["direct", "one-process", "split", PEER];
pub const PEER: &str = "litellm";

/// How a gateway figure is compared with direct.
#[derive(Clone, Copy, Debug)]
pub enum Compare {
    /// Gateway − direct (lower is better).
    Added,
    /// Gateway − direct, and gateway / direct.
    AddedAndRatio,
    /// Gateway / direct (for throughput).
    Ratio,
    /// A count: the total over the rounds, no comparison.
    Total,
    /// A figure with no comparison with direct (a success rate, or a
    /// difference already taken within each target, shown signed).
    Plain { signed: bool },
}

pub struct Row {
    pub scenario: String,
    pub metric: &'static str,
    pub unit: &'static str,
    /// Per-round values, by target ([`TARGETS`] order; empty when a target
    /// did not run the scenario).
    pub values: [Vec<f64>; 4],
    pub compare: Compare,
}

#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Median and range of the finite values; NaN when there are none.
pub fn spread(values: &[f64]) -> Spread {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Spread {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Spread {
        median,
        min: v[0],
        max: v[n - 1],
    }
}

fn spread_json(values: &[f64]) -> Value {
    let s = spread(values);
    json!({"median": s.median, "min": s.min, "max": s.max, "rounds": values})
}

fn per_round(a: &[f64], base: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    a.iter().zip(base).map(|(&x, &b)| f(x, b)).collect()
}

fn added(row: &Row, i: usize) -> Vec<f64> {
    per_round(&row.values[i], &row.values[0], |x, b| x - b)
}

fn ratio(row: &Row, i: usize) -> Vec<f64> {
    per_round(&row.values[i], &row.values[0], |x, b| x / b)
}

/// Decimals that keep three or so significant digits.
fn decimals(x: f64) -> usize {
    match x.abs() {
        x if x >= 100.0 => 0,
        x if x >= 10.0 => 1,
        x if x >= 1.0 => 2,
        x if x >= 0.1 => 3,
        _ => 4,
    }
}

fn num(x: f64, d: usize, sign: bool) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    if sign {
        format!("{x:+.d$}")
    } else {
        format!("{x:.d$}")
    }
}

fn cell(values: &[f64], sign: bool, prefix: &str) -> String {
    let s = spread(values);
    if !s.median.is_finite() {
        return "n/a".into();
    }
    let d = decimals(s.median);
    if values.len() < 2 {
        return format!("{prefix}{}", num(s.median, d, sign));
    }
    format!(
        "{prefix}{} ({}–{})",
        num(s.median, d, sign),
        num(s.min, d, sign),
        num(s.max, d, sign)
    )
}

fn value_cell(row: &Row, i: usize) -> String {
    if row.values[i].is_empty() {
        return String::new();
    }
    match row.compare {
        Compare::Total => format!("{}", row.values[i].iter().sum::<f64>()),
        Compare::Plain { signed } => cell(&row.values[i], signed, ""),
        _ => cell(&row.values[i], false, ""),
    }
}

fn vs_cell(row: &Row, i: usize) -> String {
    if row.values[i].is_empty() {
        return String::new();
    }
    match row.compare {
        Compare::Total | Compare::Plain { .. } => String::new(),
        Compare::Added => cell(&added(row, i), true, ""),
        Compare::Ratio => cell(&ratio(row, i), false, "×"),
        Compare::AddedAndRatio => {
            format!(
                "{}  ×{:.2}",
                cell(&added(row, i), true, ""),
                spread(&ratio(row, i)).median
            )
        }
    }
}

/// The table, ready to print (the peer's columns only when it ran).
pub fn table(rows: &[Row]) -> String {
    let peer = rows.iter().any(|r| !r.values[3].is_empty());
    let mut header = vec![
        "scenario",
        "metric",
        "direct",
        "one-process",
        "vs direct",
        "split",
        "vs direct",
    ];
    if peer {
        header.extend([PEER, "vs direct"]);
    }
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    let mut last_scenario = "";
    for row in rows {
        let scenario = if row.scenario == last_scenario {
            ""
        } else {
            row.scenario.as_str()
        };
        last_scenario = row.scenario.as_str();
        let mut line = vec![
            scenario.to_owned(),
            format!("{} ({})", row.metric, row.unit),
            value_cell(row, 0),
            value_cell(row, 1),
            vs_cell(row, 1),
            value_cell(row, 2),
            vs_cell(row, 2),
        ];
        if peer {
            line.push(value_cell(row, 3));
            line.push(vs_cell(row, 3));
        }
        lines.push(line);
    }
    let mut widths = vec![0usize; header.len()];
    for line in &lines {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (n, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(c, &w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        out.push_str(cells.join(" | ").trim_end());
        out.push('\n');
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
            out.push_str(&rule.join("-+-"));
            out.push('\n');
        }
    }
    out
}

/// The rows as JSON: per target the per-round values, their median and
/// spread, and for the gateways the comparison with direct.
pub fn rows_json(rows: &[Row]) -> Value {
    let list: Vec<Value> = rows
        .iter()
        .map(|row| {
            let mut entry = json!({"scenario": row.scenario, "metric": row.metric, "unit": row.unit});
            for (i, name) in TARGETS.iter().enumerate() {
                if row.values[i].is_empty() {
                    continue;
                }
                let mut v = match row.compare {
                    Compare::Total => {
                        json!({"total": row.values[i].iter().sum::<f64>(), "rounds": row.values[i]})
                    }
                    _ => spread_json(&row.values[i]),
                };
                if i > 0 {
                    let vs = match row.compare {
                        Compare::Total | Compare::Plain { .. } => Value::Null,
                        Compare::Added => json!({"added": spread_json(&added(row, i))}),
                        Compare::Ratio => json!({"ratio": spread_json(&ratio(row, i))}),
                        Compare::AddedAndRatio => json!({
                            "added": spread_json(&added(row, i)),
                            "ratio": spread_json(&ratio(row, i)),
                        }),
                    };
                    v["vs_direct"] = vs;
                }
                entry[name.replace('-', "_")] = v;
            }
            entry
        })
        .collect();
    Value::Array(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        let s = spread(&[3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[1.0, 2.0]).median, 1.5);
        assert!(spread(&[]).median.is_nan());
    }

    #[test]
    fn comparisons_are_per_round() {
        let row = Row {
            scenario: "S1".into(),
            metric: "p50",
            unit: "ms",
            values: [vec![1.0, 2.0], vec![1.5, 2.1], vec![3.0, 4.0], vec![]],
            compare: Compare::Added,
        };
        let a = added(&row, 1);
        assert!((a[0] - 0.5).abs() < 1e-9 && (a[1] - 0.1).abs() < 1e-9);
        assert_eq!(ratio(&row, 2), vec![3.0, 2.0]);
        let t = table(&[row]);
        assert!(t.contains("+0.300 (+0.100–+0.500)"));
        assert!(!t.contains(PEER), "no peer columns when it did not run");
    }
}
