import ArgumentParser
import Glibc
import PMLCore
import PMLPosix

/// `pml metrics`: the process table as Prometheus text exposition format (version 0.0.4).
///
/// Every per-worker value comes from one `list` answer — the same source, and so the same values,
/// as `pml ls --json` at that moment. Per-app extras (pending connections, the metrics workers send
/// with `{"type":"metric"}`) come from one `describe` per app after it.
struct Metrics: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print every worker's cpu, memory, restarts, uptime and state as Prometheus text.",
        discussion: """
        Samples are labelled app, id and instance. Scrape it with node_exporter's textfile collector
        (pml metrics > /var/lib/node_exporter/pml.prom) or any tool that runs a command.
        """)

    @OptionGroup var options: DaemonOptions

    func run() throws {
        let client = options.client
        let rows = try client.send(ControlRequest(cmd: .list)).processes ?? []
        var descriptions: [String: AppDescription] = [:]
        for name in PrometheusText.appNames(rows) {
            // An app deleted between the two requests just has no extras.
            if let d = try? client.send(ControlRequest(cmd: .describe, target: name), autostart: false).app {
                descriptions[name] = d
            }
        }
        Output.print(PrometheusText.render(rows: rows, descriptions: descriptions))
    }
}
