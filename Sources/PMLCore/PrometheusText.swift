/// The process table in the Prometheus text exposition format, shared by `pml metrics` and the
/// daemon's metrics endpoint. Pure: it only formats what `list` and `describe` report.
public enum PrometheusText {
    /// One metric family: `# HELP`, `# TYPE`, then its samples.
    struct Family {
        var name: String
        var help: String
        var type: String
        var samples: [(labels: [(String, String)], value: String)] = []

        mutating func add(_ labels: [(String, String)], _ value: String) { samples.append((labels, value)) }

        var text: String {
            var out = "# HELP \(name) \(PrometheusText.escapeHelp(help))\n# TYPE \(name) \(type)\n"
            for s in samples {
                let labels = s.labels.map { "\($0.0)=\"\(PrometheusText.escapeLabel($0.1))\"" }.joined(separator: ",")
                out += labels.isEmpty ? "\(name) \(s.value)\n" : "\(name){\(labels)} \(s.value)\n"
            }
            return out
        }
    }

    /// App names in the order their first worker appears.
    public static func appNames(_ rows: [ProcessRow]) -> [String] {
        var seen = Set<String>()
        return rows.compactMap { seen.insert($0.name).inserted ? $0.name : nil }
    }

    /// The whole exposition: per-worker families from `rows`, per-app extras from `descriptions`.
    public static func render(rows: [ProcessRow], descriptions: [String: AppDescription]) -> String {
        var cpu = Family(name: "pml_worker_cpu_percent", help: "CPU use of the worker process, percent of one core over the last sample period.", type: "gauge")
        var memory = Family(name: "pml_worker_memory_bytes", help: "Resident memory of the worker process in bytes.", type: "gauge")
        var restarts = Family(name: "pml_worker_restarts_total", help: "Times pml restarted the worker.", type: "counter")
        var uptime = Family(name: "pml_worker_uptime_seconds", help: "Seconds since the worker process started (absent when it is not running).", type: "gauge")
        var up = Family(name: "pml_worker_up", help: "1 if the worker is online, else 0.", type: "gauge")
        var custom = Family(name: "pml_worker_metric", help: "Latest value of each metric the worker sent to pml ({\"type\":\"metric\"} messages), by name.", type: "gauge")
        var workers = Family(name: "pml_app_workers", help: "Workers (instances) the app has, in any state.", type: "gauge")
        var online = Family(name: "pml_app_workers_online", help: "Workers of the app that are online.", type: "gauge")
        var pending = Family(name: "pml_app_pending_connections", help: "Connections pml accepted for the app and has not yet handed to a worker.", type: "gauge")
        var dispatched = Family(name: "pml_worker_connections_dispatched_total", help: "Connections pml handed to the worker (all its processes).", type: "counter")
        var reloads = Family(name: "pml_app_reloads_total", help: "Reloads of the app that completed.", type: "counter")
        var scales = Family(name: "pml_app_scale_events_total", help: "Changes of the app's worker count (pml scale, autoscale).", type: "counter")

        for r in rows {
            let labels = [("app", r.name), ("id", String(r.id)), ("instance", String(r.instance))]
            cpu.add(labels, number(r.cpu))
            memory.add(labels, String(r.memory))
            restarts.add(labels, String(r.restarts))
            if let ms = r.uptimeMs { uptime.add(labels, number(Double(ms) / 1000)) }
            up.add(labels, r.status == .online ? "1" : "0")
            if let w = descriptions[r.name]?.workers.first(where: { $0.row.id == r.id }) {
                for key in w.metrics.keys.sorted() { custom.add(labels + [("name", key)], number(w.metrics[key]!)) }
                dispatched.add(labels, String(w.dispatched))
            }
        }
        for name in appNames(rows) {
            let mine = rows.filter { $0.name == name }
            workers.add([("app", name)], String(mine.count))
            online.add([("app", name)], String(mine.filter { $0.status == .online }.count))
            if let d = descriptions[name] {
                pending.add([("app", name)], String(d.pendingConnections))
                reloads.add([("app", name)], String(d.reloads))
                scales.add([("app", name)], String(d.scaleEvents))
            }
        }
        return [cpu, memory, restarts, uptime, up, dispatched, custom, workers, online, pending, reloads, scales].map(\.text).joined()
    }

    /// A sample value: Go's float syntax, which Prometheus parses ("NaN", "+Inf", "-Inf", "1.5", "12").
    public static func number(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return String(v)
    }

    /// Label values escape backslash, double quote and newline.
    static func escapeLabel(_ s: String) -> String { escape(s, quote: true) }

    /// HELP text escapes backslash and newline.
    static func escapeHelp(_ s: String) -> String { escape(s, quote: false) }

    /// By scalar: "\r\n" is one Character, and its "\n" must still be escaped.
    private static func escape(_ s: String, quote: Bool) -> String {
        var out = String.UnicodeScalarView()
        for u in s.unicodeScalars {
            switch u {
            case "\\": out.append(contentsOf: "\\\\".unicodeScalars)
            case "\"" where quote: out.append(contentsOf: "\\\"".unicodeScalars)
            case "\n": out.append(contentsOf: "\\n".unicodeScalars)
            default: out.append(u)
            }
        }
        return String(out)
    }
}
