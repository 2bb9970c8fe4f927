//! How `ls` prints what it knows: the table (or JSON array) at the end of a run, and one line
//! (or JSON object) per change with `--watch`. Pure: the table is built as text, then printed.

use std::io::Write;

use super::registry::{now_ms, Change, Entry};

/// The listing at the end of a run without `--watch`: JSON, or a table.
///
/// # Errors
/// Serializing or writing to stdout failed.
pub fn entries(entries: &[Entry], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(entries)?);
    } else {
        print!("{}", table(entries, now_ms()));
    }
    Ok(())
}

/// One change, as `--watch` prints it.
///
/// # Errors
/// Serializing or writing to stdout failed.
pub fn change(change: &Change, json: bool) -> anyhow::Result<()> {
    let (sign, event, entry) = match change {
        Change::Up(e) => ('+', "up", e),
        Change::Down(e) => ('-', "down", e),
    };
    if json {
        let mut value = serde_json::to_value(entry)?;
        value["event"] = event.into();
        value["at_ms"] = now_ms().into();
        println!("{value}");
    } else {
        let mut details = String::new();
        if entry.role == "broker" {
            details = format!("  tls {}  auth {}", tls_cell(entry), auth_cell(entry));
            if let Some(names) = &entry.names {
                details.push_str(&format!("  names {names}"));
            }
        }
        println!(
            "{sign} {:<6} {:<16} {:<8} {:<21} {}{details}",
            entry.role,
            entry.name,
            entry.kind,
            address_cell(entry),
            entry.broker
        );
    }
    std::io::stdout().flush()?;
    Ok(())
}

/// The TLS column: `-` for a node (or a broker known only through the cluster), `no`, or the
/// start of the advertised fingerprint.
fn tls_cell(e: &Entry) -> String {
    match (e.tls, &e.fingerprint) {
        (None, _) => "-".into(),
        (Some(false), _) => "no".into(),
        (Some(true), Some(fp)) => format!("sha256:{}", &fp[..fp.len().min(12)]),
        (Some(true), None) => "yes".into(),
    }
}

/// The AUTH column: `-` when not advertised (a node, a broker known only through the
/// cluster), else whether the broker asks for credentials.
fn auth_cell(e: &Entry) -> String {
    match e.auth {
        None => "-",
        Some(true) => "token",
        Some(false) => "open",
    }
    .into()
}

/// The ADDRESS column: a broker known only through the cluster has none `ls` could see.
fn address_cell(e: &Entry) -> String {
    if e.addr.is_empty() && e.via == "cluster" {
        "(via cluster)".into()
    } else {
        e.addr.clone()
    }
}

/// The AGE column: how long it has been online (for a broker of the cluster, its uptime) or
/// offline; `-` for an offline broker of the cluster, whose `since` is when its run started.
fn age_cell(e: &Entry, now_ms: u64) -> String {
    if e.role == "broker" && e.names.is_some() && !e.online {
        return "-".into();
    }
    age(now_ms.saturating_sub(e.since_ms))
}

/// A duration in milliseconds, short: `42s`, `3m07s`, `5h02m`.
fn age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// The table, one line per entry under a header, as of `now_ms`. The NAMES and NODES columns
/// (a broker's names mode and online nodes) are there only when the brokers form a cluster.
fn table(entries: &[Entry], now_ms: u64) -> String {
    let cluster = entries.iter().any(|e| e.names.is_some());
    let mut header = vec!["ROLE", "NAME", "KIND", "ADDRESS", "BROKER", "TLS", "AUTH"];
    if cluster {
        header.extend(["NAMES", "NODES"]);
    }
    header.extend(["AGE", "STATUS"]);
    let header: Vec<String> = header.into_iter().map(String::from).collect();
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let broker_row = e.role == "broker";
            let mut row = vec![
                e.role.to_string(),
                e.name.clone(),
                match &e.host {
                    // A broker a node hosts in peer mode: which node.
                    Some(host) => format!("{} ({host})", e.kind),
                    None => e.kind.clone(),
                },
                address_cell(e),
                if broker_row {
                    "-".into()
                } else {
                    e.broker.clone()
                },
                tls_cell(e),
                auth_cell(e),
            ];
            if cluster {
                row.push(e.names.clone().unwrap_or_else(|| "-".into()));
                row.push(e.nodes.map_or_else(|| "-".into(), |n| n.to_string()));
            }
            row.push(age_cell(e, now_ms));
            row.push(if e.online { "online" } else { "offline" }.to_string());
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(nothing seen yet: is a broker running with mDNS on this LAN?)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::registry::Registry;
    use super::*;
    use discovery::{Seen, Service};

    fn broker(name: &str, security: &discovery::BrokerSecurity) -> Service {
        Service {
            fullname: format!("{name}.{}", discovery::BROKER_TYPE),
            service_type: discovery::BROKER_TYPE.into(),
            name: name.into(),
            addrs: vec!["10.0.0.1".parse().unwrap()],
            port: 8765,
            txt: discovery::broker_txt(name, security).into_iter().collect(),
        }
    }

    /// The cells of the line whose NAME column is `name`.
    fn line_of(table: &str, name: &str) -> Vec<String> {
        table
            .lines()
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .find(|cells| cells.get(1).map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no line for {name} in\n{table}"))
    }

    #[test]
    fn brokers_show_tls_and_auth_cells() {
        let mut r = Registry::default();
        r.on_mdns(Seen::Up(broker("open", &Default::default())));
        let secure = discovery::BrokerSecurity {
            tls_fingerprint: Some("ab".repeat(32)),
            auth: true,
        };
        r.on_mdns(Seen::Up(broker("secure", &secure)));
        let entries = r.entries();
        assert_eq!(
            (tls_cell(&entries[0]), auth_cell(&entries[0])),
            ("no".into(), "open".into())
        );
        assert_eq!(tls_cell(&entries[1]), "sha256:abababababab");
        assert_eq!(auth_cell(&entries[1]), "token");
        let table = table(&entries, now_ms());
        assert!(
            !table.contains("NAMES"),
            "no cluster, no cluster columns:\n{table}"
        );
    }

    #[test]
    fn a_cluster_adds_names_and_nodes_columns_and_brokers_seen_only_through_it() {
        let mut r = Registry::default();
        r.set_presence_broker("ws://127.0.0.1:1");
        r.on_mdns(Seen::Up(broker("a", &Default::default())));
        r.on_cluster_broker("a", &json!({"online":true,"since":1_000,"names":"cluster"}));
        r.on_cluster_broker("b", &json!({"online":false,"since":2_000,"names":"local"}));
        r.on_presence(
            "pin-1",
            &json!({"kind":"pin","online":true,"since":61_000,"addr":"127.0.0.1:5","broker":"a"}),
        );
        let table = table(&r.entries(), 181_000);
        let header = table.lines().next().unwrap_or_default();
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            [
                "ROLE", "NAME", "KIND", "ADDRESS", "BROKER", "TLS", "AUTH", "NAMES", "NODES",
                "AGE", "STATUS"
            ]
        );
        assert_eq!(
            line_of(&table, "a"),
            [
                "broker",
                "a",
                "broker",
                "10.0.0.1:8765",
                "-",
                "no",
                "open",
                "cluster",
                "1",
                "3m00s",
                "online"
            ]
        );
        assert_eq!(
            line_of(&table, "b"),
            [
                "broker", "b", "broker", "(via", "cluster)", "-", "-", "-", "local", "0", "-",
                "offline"
            ]
        );
        assert_eq!(
            line_of(&table, "pin-1"),
            [
                "node",
                "pin-1",
                "pin",
                "127.0.0.1:5",
                "a",
                "-",
                "-",
                "-",
                "-",
                "2m00s",
                "online"
            ]
        );
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(187_000), "3m07s");
        assert_eq!(age(5 * 3_600_000 + 120_000), "5h02m");
    }
}
