//! OpenTelemetry → Prometheus names, following the OpenTelemetry specification's
//! "Prometheus and OpenMetrics Compatibility": sanitised names, units in base
//! form as suffixes, `_total` on monotonic counters, `_ratio` for unit `1` gauges.

/// Replaces every character Prometheus does not allow in a metric name with `_`
/// and collapses repeats; a leading digit gets a `_` prefix.
pub fn sanitize_metric_name(name: &str) -> String {
    sanitize(name, true)
}

/// Same for label names (no `:` allowed); `__` prefixes are reserved, so they become `key__`.
pub fn sanitize_label_name(name: &str) -> String {
    let s = sanitize(name, false);
    if s.starts_with("__") && !name.starts_with("__") {
        format!("key{s}")
    } else {
        s
    }
}

fn sanitize(name: &str, allow_colon: bool) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    let mut last_underscore = false;
    for c in name.chars() {
        let ok = c.is_ascii_alphanumeric() || c == '_' || (allow_colon && c == ':');
        if ok {
            out.push(c);
            last_underscore = c == '_';
        } else if !last_underscore {
            out.push('_');
            last_underscore = true;
        }
    }
    if out.is_empty() {
        return "_".into();
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn unit_word(u: &str) -> Option<&'static str> {
    Some(match u {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        _ => return None,
    })
}

fn per_unit_word(u: &str) -> Option<&'static str> {
    Some(match u {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        _ => return None,
    })
}

/// The Prometheus suffix for an OpenTelemetry unit (UCUM): `s` → `seconds`,
/// `By/s` → `bytes_per_second`; annotations in braces (`{orders}`) are dropped.
pub fn unit_suffix(unit: &str, is_gauge: bool) -> String {
    // Drop {annotations}.
    let mut clean = String::new();
    let mut depth = 0;
    for c in unit.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = (depth - 1).max(0),
            _ if depth == 0 => clean.push(c),
            _ => {}
        }
    }
    let clean = clean.trim();
    if clean.is_empty() {
        return String::new();
    }
    if clean == "1" {
        return if is_gauge { "ratio".into() } else { String::new() };
    }
    let (num, per) = match clean.split_once('/') {
        Some((a, b)) => (a.trim(), Some(b.trim())),
        None => (clean, None),
    };
    let mut parts = Vec::new();
    if !num.is_empty() {
        parts.push(
            unit_word(num)
                .map(str::to_string)
                .unwrap_or_else(|| sanitize(num, false)),
        );
    }
    if let Some(p) = per.filter(|p| !p.is_empty()) {
        let w = per_unit_word(p)
            .map(str::to_string)
            .unwrap_or_else(|| sanitize(p, false));
        parts.push(format!("per_{w}"));
    }
    parts.join("_").trim_matches('_').to_string()
}

/// The full Prometheus name of an OpenTelemetry metric (without `_bucket`/`_sum`/`_count`).
pub fn metric_name(namespace: &str, name: &str, unit: &str, kind: Kind, add_suffixes: bool) -> String {
    let mut n = if namespace.is_empty() {
        sanitize_metric_name(name)
    } else {
        sanitize_metric_name(&format!("{namespace}_{name}"))
    };
    if add_suffixes {
        let suffix = unit_suffix(unit, kind == Kind::Gauge);
        if !suffix.is_empty() && !n.ends_with(&format!("_{suffix}")) {
            // A counter named `x_total` with a unit gets the unit before `_total`.
            if let Some(base) = n.strip_suffix("_total") {
                n = format!("{base}_{suffix}");
            } else {
                n = format!("{n}_{suffix}");
            }
        }
        if kind == Kind::Counter && !n.ends_with("_total") {
            n.push_str("_total");
        }
    }
    n
}

/// Prometheus metric family types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
        }
    }
}

/// Escapes a label value for the text format.
pub fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes HELP text.
pub fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_specification() {
        assert_eq!(
            metric_name("", "http.server.duration", "s", Kind::Histogram, true),
            "http_server_duration_seconds"
        );
        assert_eq!(
            metric_name("", "business.revenue", "{USD}", Kind::Counter, true),
            "business_revenue_total"
        );
        assert_eq!(
            metric_name("", "system.cpu.utilization", "1", Kind::Gauge, true),
            "system_cpu_utilization_ratio"
        );
        assert_eq!(
            metric_name("", "net.io", "By/s", Kind::Gauge, true),
            "net_io_bytes_per_second"
        );
        assert_eq!(
            metric_name("shop", "orders", "", Kind::Counter, true),
            "shop_orders_total"
        );
        assert_eq!(
            metric_name("", "requests_total", "", Kind::Counter, true),
            "requests_total"
        );
        assert_eq!(metric_name("", "latency", "ms", Kind::Gauge, false), "latency");
        assert_eq!(sanitize_metric_name("2xx.count"), "_2xx_count");
        assert_eq!(sanitize_label_name("service.name"), "service_name");
        assert_eq!(sanitize_label_name("a..b"), "a_b");
        assert_eq!(unit_suffix("USD", false), "USD");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        escape_label_value("a\"b\\c\nd", &mut s);
        assert_eq!(s, "a\\\"b\\\\c\\nd");
    }
}
