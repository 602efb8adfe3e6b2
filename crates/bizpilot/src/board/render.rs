//! Server-side HTML of the board's sections: the first paint (the figures show without JavaScript) and the
//! fragments each live update swaps in, so there is one renderer. Money is rendered from the API's exact
//! decimal strings, rounded to the currency's minor unit (half away from zero), with its ISO code; the page's
//! script only re-labels it with `Intl.NumberFormat` for the reader's locale (from the same decimal string).

use bizpilot_core::Money;
use serde_json::Value as Json;
use std::fmt::Write;

use super::snapshot::{Figures, Point, money, money_list};

/// HTML-escapes text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn group(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `m` rounded to its currency's minor unit (half away from zero), as `1,234.56`.
pub fn amount_text(m: &Money) -> String {
    let digits = m.currency().minor_digits().min(9);
    let scale = 10i128.pow(9 - digits);
    let n = m.nanos();
    let half = scale / 2;
    let rounded = if n < 0 { (n - half) / scale } else { (n + half) / scale };
    let abs = rounded.unsigned_abs();
    let unit = 10u128.pow(digits);
    let int = group(&(abs / unit).to_string());
    let sign = if rounded < 0 { "-" } else { "" };
    if digits == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{:0width$}", abs % unit, width = digits as usize)
    }
}

/// A money value: exact decimal in `data-amount`, rounded text with the ISO code.
pub fn money_html(m: &Money) -> String {
    format!(
        r#"<span class="money" data-currency="{c}" data-amount="{a}">{c} {t}</span>"#,
        c = m.currency().as_str(),
        a = m.amount_string(),
        t = amount_text(m)
    )
}

/// A list of money values (one per currency); zero when empty.
fn money_list_html(v: &Json, zero_currency: bizpilot_core::Currency) -> String {
    let l = money_list(v);
    if l.is_empty() {
        return money_html(&Money::zero(zero_currency));
    }
    l.iter()
        .map(money_html)
        .collect::<Vec<_>>()
        .join(r#"<span class="sep"> · </span>"#)
}

fn int(n: u64) -> String {
    group(&n.to_string())
}

fn float(x: f64, decimals: usize) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let s = format!("{:.*}", decimals, x.abs());
    let (i, f) = s.split_once('.').unwrap_or((s.as_str(), ""));
    let sign = if x < 0.0 && s.chars().any(|c| c != '0' && c != '.') {
        "-"
    } else {
        ""
    };
    if f.is_empty() {
        format!("{sign}{}", group(i))
    } else {
        format!("{sign}{}.{f}", group(i))
    }
}

fn pct(x: Option<f64>) -> String {
    x.map(|x| format!("{} %", float(x * 100.0, 1)))
        .unwrap_or_else(|| "–".into())
}

/// `4 min 12 s`, `2 h 5 min`, `36 s`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "–".into();
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        _ if s.is_multiple_of(3600) && s <= 48 * 3600 => format!("{} h", s / 3600),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// An RFC 3339 time as `<time>` (UTC text; the script shows it in local time).
fn time_html(t: Option<&str>) -> String {
    match t {
        Some(t) if t.len() >= 19 => format!(
            r#"<time datetime="{}">{} {} UTC</time>"#,
            esc(t),
            esc(&t[..10]),
            esc(&t[11..19])
        ),
        _ => "–".into(),
    }
}

fn ns(v: &Json) -> Option<u64> {
    v.as_str().and_then(|s| s.parse().ok())
}

/// Text of a JSON string value, escaped.
fn s(v: &Json) -> String {
    esc(v.as_str().unwrap_or(""))
}

fn tile(id: &str, label: &str, value: &str, note: &str, tone: &str) -> String {
    format!(
        r#"<div class="tile {tone}" data-testid="{id}"><div class="label">{label}</div><div class="value">{value}</div><div class="note">{note}</div></div>"#
    )
}

/// The header's "as of" line.
pub fn status(f: &Figures) -> String {
    let wm = f.impact.as_ref().and_then(|i| i["watermark"].as_str());
    let op = f.operation.as_deref().unwrap_or("–");
    format!(
        r#"<span>Operation <strong>{}</strong></span><span>Figures as of {} (event time)</span>"#,
        esc(op),
        time_html(wm)
    )
}

/// **Now**: the goal, revenue at risk / recovered / lost, failed operations per minute, open incidents.
pub fn now(f: &Figures, p: Option<&Point>) -> String {
    let Some(sum) = f.summary() else {
        return r#"<p class="empty">No <code>business_impact</code> connector answers yet: no figures.</p>"#.into();
    };
    let cur = f.chart_currency();
    let mut h = String::from(r#"<div class="tiles">"#);
    if let Some(g) = f.goal() {
        let att = g["attainment"].as_f64().unwrap_or(0.0);
        let proj = g["projected_attainment"].as_f64().unwrap_or(0.0);
        let target = money(&g["target"]).map(|m| money_html(&m)).unwrap_or_default();
        let achieved = money(&g["achieved"]).map(|m| money_html(&m)).unwrap_or_default();
        let projected = money(&g["projected"]).map(|m| money_html(&m)).unwrap_or_default();
        let period_s = g["period_s"].as_f64().unwrap_or(0.0);
        let period = match period_s as u64 {
            3600 => "hour".to_string(),
            86_400 => "day".to_string(),
            _ => format!("period ({})", duration(period_s)),
        };
        // Drawing only: the goal's pace per minute for the revenue chart.
        let per_min = money(&g["target"]).map(|m| m.nanos() as f64 / 1e9).unwrap_or(0.0) / (period_s / 60.0).max(1.0);
        let tone = if proj >= 1.0 {
            "good"
        } else if proj >= 0.8 {
            "warn"
        } else {
            "bad"
        };
        let bar = format!(
            r#"<div class="bar" role="img" aria-label="{a} of the goal reached, {p} projected"><span class="proj" style="width:{pw:.1}%"></span><span class="done" style="width:{aw:.1}%"></span></div>"#,
            a = pct(Some(att)),
            p = pct(Some(proj)),
            pw = (proj * 100.0).clamp(0.0, 100.0),
            aw = (att * 100.0).clamp(0.0, 100.0),
        );
        h.push_str(&format!(
            r#"<div class="tile goal {tone}" data-testid="goal" data-goal-per-min="{per_min}"><div class="label">Revenue this {period} · goal {}</div><div class="value" data-testid="goal-achieved">{achieved}</div>{bar}<div class="note">{} of {target}; projected <strong data-testid="goal-projected">{projected}</strong> ({})</div></div>"#,
            s(&g["name"]),
            pct(Some(att)),
            pct(Some(proj)),
        ));
    } else {
        h.push_str(&tile(
            "revenue",
            "Revenue",
            &money_list_html(&sum["revenue"], cur),
            "no goal configured",
            "",
        ));
    }
    let open = money_list(&sum["open_at_risk"]);
    let tone = if open.iter().any(|m| !m.is_zero()) {
        "bad"
    } else {
        "good"
    };
    h.push_str(&tile(
        "revenue-at-risk",
        "Revenue at risk",
        &money_list_html(&sum["revenue_at_risk"], cur),
        &format!("still open: {}", money_list_html(&sum["open_at_risk"], cur)),
        tone,
    ));
    h.push_str(&tile(
        "recovered-revenue",
        "Recovered",
        &money_list_html(&sum["recovered_revenue"], cur),
        &format!("lost: {}", money_list_html(&sum["lost_revenue"], cur)),
        "good",
    ));
    let fpm = p.map(|p| p.failed_per_min).unwrap_or(0.0);
    h.push_str(&tile(
        "failed-per-minute",
        "Failed operations / min",
        &float(fpm, 1),
        &format!(
            "{} failed of {} in total",
            int(sum["failed"].as_u64().unwrap_or(0)),
            int(sum["operations"].as_u64().unwrap_or(0))
        ),
        if fpm > 0.0 { "bad" } else { "good" },
    ));
    h.push_str(&tile(
        "open-incidents",
        "Open incidents",
        &int(f.open_incidents),
        &format!(
            "{} customers affected now",
            int(sum["affected_customers"]["current_window"]["affected_customers"]
                .as_u64()
                .unwrap_or(0))
        ),
        if f.open_incidents > 0 { "bad" } else { "good" },
    ));
    h.push_str("</div>");
    h.push_str(&incidents(f));
    h
}

fn incidents(f: &Figures) -> String {
    let cur = f.chart_currency();
    let list = f.incidents.as_ref().and_then(|i| i["incidents"].as_array());
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return r#"<h3>Incidents</h3><p class="empty">No incidents.</p>"#.into();
    };
    let wm = f.event_ms().unwrap_or(0) * 1_000_000;
    let mut h = String::from(
        r#"<h3>Incidents</h3><div class="scroll"><table data-testid="incidents"><thead><tr><th scope="col">Incident</th><th scope="col">State</th><th scope="col">Started</th><th scope="col" class="num">Duration</th><th scope="col" class="num">Peak failure rate</th><th scope="col" class="num">Customers</th><th scope="col" class="num">Revenue at risk</th><th scope="col" class="num">Recovered</th><th scope="col">Top causes</th></tr></thead><tbody>"#,
    );
    for i in list {
        let start = ns(&i["start_unix_nano"]).unwrap_or(0);
        let end = ns(&i["end_unix_nano"]).unwrap_or(wm.max(start));
        let causes: Vec<String> = i["top_causes"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|c| {
                        format!(
                            "<li><strong>{}</strong> {} <span class=\"dim\">×{}</span></li>",
                            s(&c["service"]),
                            s(&c["status_message"]),
                            int(c["count"].as_u64().unwrap_or(0))
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let state = i["state"].as_str().unwrap_or("");
        let _ = write!(
            h,
            r#"<tr data-incident="{id}"><th scope="row">{id}<div class="dim">{op}</div></th><td><span class="pill {state}">{state}</span></td><td>{start}</td><td class="num">{dur}</td><td class="num">{rate}</td><td class="num">{cust}</td><td class="num" data-testid="incident-at-risk">{risk}</td><td class="num" data-testid="incident-recovered">{rec}</td><td><ul class="causes">{causes}</ul></td></tr>"#,
            id = s(&i["id"]),
            op = s(&i["operation"]),
            state = esc(state),
            start = time_html(i["start"].as_str()),
            dur = duration(end.saturating_sub(start) as f64 / 1e9),
            rate = pct(i["peak_failure_rate"].as_f64()),
            cust = int(i["affected_customers"].as_u64().unwrap_or(0)),
            risk = money_list_html(&i["revenue_at_risk"], cur),
            rec = money_list_html(&i["recovered_revenue"], cur),
            causes = causes.join(""),
        );
    }
    h.push_str("</tbody></table></div>");
    let total = f.incidents.as_ref().and_then(|i| i["total"].as_u64()).unwrap_or(0);
    if total as usize > list.len() {
        let _ = write!(
            h,
            r#"<p class="dim">{} of {} incidents shown (newest first); all at <a href="api/v1/incidents">/api/v1/incidents</a>.</p>"#,
            list.len(),
            int(total)
        );
    }
    h
}

/// **Who is affected**: customers, highest cart value first.
pub fn customers(f: &Figures) -> String {
    let Some(imp) = f.impact.as_ref() else {
        return r#"<p class="empty">No figures yet.</p>"#.into();
    };
    let list = imp["customers"].as_array().cloned().unwrap_or_default();
    let total = imp["total"].as_u64().unwrap_or(0);
    if list.is_empty() {
        return r#"<p class="empty" data-testid="no-customers">No affected customers.</p>"#.into();
    }
    let mut h = String::from(
        r#"<div class="scroll tall" tabindex="0" aria-label="Affected customers"><table data-testid="customers"><thead><tr><th scope="col">Customer</th><th scope="col">Tier</th><th scope="col" class="num">Cart value</th><th scope="col">Cart</th><th scope="col" class="num">Failed attempts</th><th scope="col">Recovered</th><th scope="col">Failure</th><th scope="col">Last failure</th></tr></thead><tbody>"#,
    );
    for r in &list {
        let items: Vec<String> = r["items"]
            .as_array()
            .map(|it| {
                it.iter()
                    .map(|i| {
                        format!(
                            "{} ×{}",
                            s(&i["sku"]),
                            i["quantity"]
                                .as_u64()
                                .or_else(|| i["quantity"].as_i64().map(|q| q.max(0) as u64))
                                .unwrap_or(0)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let cart = match items.len() {
            0 => format!("{} items", r["item_count"].as_u64().unwrap_or(0)),
            1..=3 => items.join(", "),
            n => format!("{}, +{} more", items[..2].join(", "), n - 2),
        };
        let value = money(&r["cart_value"])
            .map(|m| money_html(&m))
            .unwrap_or_else(|| "–".into());
        let recovered = r["recovered"].as_bool().unwrap_or(false);
        let tier = r["tier"].as_str().unwrap_or("unknown");
        let _ = write!(
            h,
            r#"<tr data-tier="{tier}"><th scope="row" class="mono">{cust}</th><td><span class="tier">{tier}</span></td><td class="num" data-testid="cart-value">{value}</td><td class="cart">{cart}</td><td class="num">{att}</td><td>{rec}</td><td class="fail"><strong>{svc}</strong> {msg}</td><td class="nowrap">{time}</td></tr>"#,
            tier = esc(tier),
            cust = s(&r["customer"]),
            att = r["failed_attempts"].as_u64().unwrap_or(0),
            rec = if recovered {
                r#"<span class="pill closed">recovered</span>"#
            } else {
                r#"<span class="pill open">not yet</span>"#
            },
            svc = s(&r["failure"]["service"]),
            msg = s(&r["failure"]["status_message"]),
            time = time_html(r["time"].as_str()),
        );
    }
    h.push_str("</tbody></table></div>");
    let _ = write!(
        h,
        r#"<p class="dim" data-testid="customers-total">{} of {} affected customers shown, highest cart value first; the CSV export has them all.</p>"#,
        list.len(),
        int(total)
    );
    h
}

/// The recommended action for an order at risk (from its cause and time left).
fn action(a: &Json) -> String {
    let left = a["time_left_s"].as_f64().unwrap_or(0.0);
    let service = a["cause"]["service"].as_str();
    let issue = a["cause"]["issue"].as_str();
    let urgent = left < 4.0 * 3600.0;
    let mut out = match (service, issue) {
        (Some(s), Some(i)) => format!("Escalate to the {} team ({i})", esc(s)),
        (Some(s), None) => format!("Check {}", esc(s)),
        _ => format!("Move it out of {}", s(&a["stage"])),
    };
    if urgent {
        out.push_str("; expedite and tell the customer");
    }
    out
}

/// **The 24-hour KPI**: compliance, orders at risk with explanation and action, causes.
pub fn kpis(f: &Figures) -> String {
    if f.kpis.is_empty() {
        return r#"<p class="empty">No <code>order_kpi</code> connector in this configuration.</p>"#.into();
    }
    let mut h = String::new();
    for (k, at_risk) in &f.kpis {
        let name = s(&k["name"]);
        let compliance = k["compliance"].as_f64();
        let threshold = 0.95;
        let tone = match compliance {
            Some(c) if c >= threshold => "good",
            Some(c) if c >= 0.9 => "warn",
            Some(_) => "bad",
            None => "",
        };
        let resolved = &k["resolved"];
        let _ = write!(
            h,
            r#"<h3>{name} <span class="dim">{from} → {to} within {dl}</span></h3><div class="tiles">{}{}{}{}</div>"#,
            tile(
                &format!("kpi-{name}-compliance"),
                "Compliance",
                &pct(compliance),
                &format!(
                    "{} in time · {} late · {} cancelled",
                    int(resolved["in_time"].as_u64().unwrap_or(0)),
                    int(resolved["breached"].as_u64().unwrap_or(0)),
                    int(resolved["cancelled"].as_u64().unwrap_or(0))
                ),
                tone
            ),
            tile(
                &format!("kpi-{name}-open"),
                "Open orders",
                &int(k["open"].as_u64().unwrap_or(0)),
                &k["open_by_stage"]
                    .as_object()
                    .map(|m| m
                        .iter()
                        .map(|(st, n)| format!("{} {}", esc(st), int(n.as_u64().unwrap_or(0))))
                        .collect::<Vec<_>>()
                        .join(" · "))
                    .unwrap_or_default(),
                ""
            ),
            tile(
                &format!("kpi-{name}-at-risk"),
                "Orders at risk",
                &int(k["at_risk"]["at_risk"].as_u64().unwrap_or(0)),
                &s(&k["at_risk"]["headline"]),
                if k["at_risk"]["at_risk"].as_u64().unwrap_or(0) > 0 {
                    "bad"
                } else {
                    "good"
                }
            ),
            tile(
                &format!("kpi-{name}-precision"),
                "Prediction precision / recall",
                &format!(
                    "{} / {}",
                    pct(k["prediction"]["precision"].as_f64()),
                    pct(k["prediction"]["recall"].as_f64())
                ),
                &format!(
                    "median lead time {}",
                    k["prediction"]["median_lead_time_s"]
                        .as_f64()
                        .map(duration)
                        .unwrap_or_else(|| "–".into())
                ),
                ""
            ),
            from = s(&k["from"]),
            to = s(&k["to"]),
            dl = duration(k["deadline_s"].as_f64().unwrap_or(0.0)),
        );
        if let Some(causes) = k["at_risk"]["causes"].as_array().filter(|c| !c.is_empty()) {
            h.push_str(r#"<h4>Causes of the orders at risk</h4><ul class="shares">"#);
            for c in causes {
                let share = c["share"].as_f64().unwrap_or(0.0);
                let _ = write!(
                    h,
                    r#"<li><span class="share-bar" style="width:{w:.1}%"></span><span>{cause}</span> <strong>{n}</strong> <span class="dim">({p})</span></li>"#,
                    w = (share * 100.0).clamp(0.0, 100.0),
                    cause = s(&c["cause"]),
                    n = int(c["orders"].as_u64().unwrap_or(0)),
                    p = pct(Some(share)),
                );
            }
            h.push_str("</ul>");
        }
        let list = at_risk
            .as_ref()
            .and_then(|a| a["orders"].as_array().or(a["at_risk"].as_array()));
        if let Some(list) = list.filter(|l| !l.is_empty()) {
            h.push_str(
                r#"<div class="scroll"><table data-testid="at-risk"><thead><tr><th scope="col">Order</th><th scope="col" class="num">Probability</th><th scope="col">Stage</th><th scope="col">Deadline</th><th scope="col" class="num">Time left</th><th scope="col">Why</th><th scope="col">Recommended action</th></tr></thead><tbody>"#,
            );
            for a in list {
                let e = &a["explanation"];
                let why = format!(
                    "{} for {}{}; cause: {}",
                    s(&a["stage"]),
                    duration(e["stuck_for_s"].as_f64().unwrap_or(0.0)),
                    e["typical_stage_s"]
                        .as_f64()
                        .map(|t| format!(" (typically {})", duration(t)))
                        .unwrap_or_default(),
                    s(&a["cause"]["label"]),
                );
                let _ = write!(
                    h,
                    r#"<tr><th scope="row" class="mono">{}</th><td class="num">{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td>{why}</td><td>{}</td></tr>"#,
                    s(&a["order_id"]),
                    pct(a["probability"].as_f64()),
                    s(&a["stage"]),
                    time_html(a["deadline"].as_str()),
                    duration(a["time_left_s"].as_f64().unwrap_or(0.0)),
                    action(a),
                );
            }
            h.push_str("</tbody></table></div>");
        }
    }
    h
}

/// A JSON value as compact HTML: objects as definition lists, arrays of objects as tables.
fn json_html(v: &Json, depth: usize) -> String {
    if let Some(m) = money(v) {
        return money_html(&m);
    }
    match v {
        Json::Object(m) if depth < 3 => {
            let mut h = String::from("<dl class=\"kv\">");
            for (k, v) in m {
                let _ = write!(h, "<dt>{}</dt><dd>{}</dd>", esc(k), json_html(v, depth + 1));
            }
            h.push_str("</dl>");
            h
        }
        Json::Array(a) if depth < 3 && a.iter().all(Json::is_object) && !a.is_empty() => {
            let mut cols: Vec<&String> = Vec::new();
            for o in a.iter().filter_map(Json::as_object) {
                for k in o.keys() {
                    if !cols.contains(&k) {
                        cols.push(k);
                    }
                }
            }
            let mut h = String::from("<div class=\"scroll\"><table><thead><tr>");
            for c in &cols {
                let _ = write!(h, "<th scope=\"col\">{}</th>", esc(c));
            }
            h.push_str("</tr></thead><tbody>");
            for o in a.iter().take(50) {
                h.push_str("<tr>");
                for c in &cols {
                    let _ = write!(h, "<td>{}</td>", json_html(&o[c.as_str()], depth + 1));
                }
                h.push_str("</tr>");
            }
            h.push_str("</tbody></table></div>");
            h
        }
        Json::String(t) => esc(t),
        Json::Null => "–".into(),
        other => esc(&other.to_string()),
    }
}

/// **Capacity**: the capacity plan, where a planner answers `GET /api/v1/plan`.
pub fn capacity(f: &Figures) -> Option<String> {
    let plan = f.plan.as_ref()?;
    let v = money(plan).map(|m| money_html(&m));
    Some(v.unwrap_or_else(|| json_html(plan, 0)))
}

/// **Pipeline health**: per component, queues, memory limiters.
pub fn health(f: &Figures) -> String {
    let hl = &f.health;
    let mut h = String::new();
    if hl.components.is_empty() {
        h.push_str(r#"<p class="empty">No component has counted anything yet.</p>"#);
    } else {
        h.push_str(
            r#"<div class="scroll"><table data-testid="health"><thead><tr><th scope="col">Component</th><th scope="col" class="num">Accepted</th><th scope="col" class="num">Refused</th><th scope="col" class="num">Sent</th><th scope="col" class="num">Failed / dropped</th></tr></thead><tbody>"#,
        );
        for c in &hl.components {
            let bad = c.refused + c.failed + c.dropped > 0.0;
            let _ = write!(
                h,
                r#"<tr><th scope="row">{id} <span class="dim">{kind}</span></th><td class="num">{}</td><td class="num{}">{}</td><td class="num">{}</td><td class="num{}">{}</td></tr>"#,
                float(c.accepted, 0),
                if c.refused > 0.0 { " alert" } else { "" },
                float(c.refused, 0),
                float(c.sent, 0),
                if bad && c.failed + c.dropped > 0.0 {
                    " alert"
                } else {
                    ""
                },
                float(c.failed + c.dropped, 0),
                id = esc(&c.id),
                kind = esc(&c.kind),
            );
        }
        h.push_str("</tbody></table></div>");
    }
    if hl.queues.iter().any(|q| q.capacity > 0.0) || !hl.memory.is_empty() {
        h.push_str(r#"<div class="tiles">"#);
        for q in hl.queues.iter().filter(|q| q.capacity > 0.0) {
            let fill = if q.capacity > 0.0 { q.size / q.capacity } else { 0.0 };
            let tone = if fill >= 0.8 {
                "bad"
            } else if fill >= 0.5 {
                "warn"
            } else {
                "good"
            };
            h.push_str(&tile(
                "queue",
                &format!("Queue of {}", esc(&q.exporter)),
                &pct(Some(fill)),
                &format!("{} of {} batches", float(q.size, 0), float(q.capacity, 0)),
                tone,
            ));
        }
        for m in &hl.memory {
            let state = m.state();
            let tone = match state {
                "ok" => "good",
                "soft" => "warn",
                _ => "bad",
            };
            h.push_str(&tile(
                "memory",
                &format!("Memory ({})", esc(&m.processor)),
                match state {
                    "ok" => "normal",
                    "soft" => "refusing (soft limit)",
                    _ => "at hard limit",
                },
                &format!(
                    "{} of {} MiB soft limit · {} refusals",
                    float(m.usage / 1_048_576.0, 0),
                    float(m.soft_limit / 1_048_576.0, 0),
                    float(m.refusals, 0)
                ),
                tone,
            ));
        }
        h.push_str("</div>");
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizpilot_core::Currency;

    #[test]
    fn money_is_rounded_half_away_from_zero_to_the_minor_unit() {
        let m = |s: &str, c| Money::parse_amount(s, c).unwrap();
        assert_eq!(amount_text(&m("1234567.125", Currency::USD)), "1,234,567.13");
        assert_eq!(amount_text(&m("-0.005", Currency::USD)), "-0.01");
        assert_eq!(amount_text(&m("0.004999999", Currency::USD)), "0.00");
        assert!(money_html(&m("12.3", Currency::EUR)).contains(r#"data-amount="12.30""#));
    }

    #[test]
    fn text_is_escaped_and_durations_read_well() {
        assert_eq!(esc(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(duration(252.0), "4 min 12 s");
        assert_eq!(duration(7500.0), "2 h 5 min");
        assert_eq!(float(-1234.56, 1), "-1,234.6");
    }
}
