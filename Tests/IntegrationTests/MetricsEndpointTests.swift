// The daemon serves `pml metrics` over HTTP on a loopback address set in $PML_HOME/config.json.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

extension Integration {
    @Suite("Metrics endpoint")
    struct MetricsEndpoint {
        @Test("config.json metrics_listen on 127.0.0.1 serves the same families as pml metrics; a non-loopback address is refused")
        func servesOnLoopback() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                try box.writeConfig(#"{"metrics_listen": "127.0.0.1:\#(port)"}"#)
                try await box.pmlOK("start", "--name", "m", "-i", "2", "--", "sleep", "1000")
                let rows = try await box.waitOnline("m", count: 2)
                let scraped = try await box.waitFor("the metrics endpoint") { () -> String? in
                    let text = HTTP.request("http://127.0.0.1:\(port)/metrics", timeout: 2).body
                    return text.contains("pml_worker_up") ? text : nil
                }
                for r in rows {
                    #expect(scraped.contains("pml_worker_up{app=\"m\",id=\"\(r.id)\",instance=\"\(r.instance)\"} 1"), "\(scraped)")
                }
                #expect(scraped.contains("# TYPE pml_worker_restarts_total counter"))
                #expect(scraped.contains("pml_worker_connections_dispatched_total{app=\"m\",id=\"\(rows[0].id)\""), "\(scraped)")
                #expect(scraped.contains("pml_app_reloads_total{app=\"m\"} 0") && scraped.contains("pml_app_scale_events_total{app=\"m\"} 0"), "\(scraped)")
                // Built at most once a second (any local user can scrape): two scrapes in a row get the
                // same text, uptimes to the millisecond included; a later one is built afresh.
                // (Three: the first two may straddle the end of a second.)
                let texts = (0..<3).map { _ in HTTP.request("http://127.0.0.1:\(port)/metrics", timeout: 2).body }
                let first = texts[1]
                #expect(first.contains("pml_worker_uptime_seconds{") && (texts[0] == texts[1] || texts[1] == texts[2]))
                try await box.waitFor("a fresh text after a second", timeout: 5) {
                    let later = HTTP.request("http://127.0.0.1:\(port)/metrics", timeout: 2).body
                    return later.contains("pml_worker_up{") && later != first ? true : nil
                }
                try await box.pmlOK("scale", "m", "3")
                try await box.pmlOK("reload", "m", "--parallel", "3")
                let counted = try await box.pmlOK("metrics")
                #expect(counted.stdout.contains("pml_app_scale_events_total{app=\"m\"} 1"), "\(counted)")
                #expect(counted.stdout.contains("pml_app_reloads_total{app=\"m\"} 1"), "\(counted)")
                let cli = try await box.pmlOK("metrics")
                let families = { (text: String) in Set(text.split(separator: "\n").filter { $0.hasPrefix("# TYPE") }) }
                #expect(families(cli.stdout) == families(scraped), "the endpoint and pml metrics expose the same families")

                try await box.pmlOK("kill")
                try box.writeConfig(#"{"metrics_listen": "0.0.0.0:\#(port)"}"#)
                try await box.pmlOK("ping")
                let log = box.read(box.daemonLog)
                #expect(log.contains("must be a loopback address"), "a public address is refused:\n\(log.suffix(400))")
            }
        }

        /// One HTTP/1.1 request with `host` as its Host header; the whole answer ("" if none).
        static func get(port: Int, _ path: String, host: String, method: String = "GET") -> String {
            (try? HTTP.exchange(.local(port), method: method, path: path, headers: ["Host": host]).get().text) ?? ""
        }

        @Test("the metrics listener answers only requests whose Host names loopback (DNS rebinding), on every path; GET only")
        func hostCheck() async throws {
            try await withSandbox { box in
                let port = try Net.freePort()
                try box.startDaemon(env: ["PML_METRICS_LISTEN": "127.0.0.1:\(port)"])
                try await box.pmlOK("start", "--name", "m", "--", "sleep", "1000")
                _ = try await box.waitOnline("m")
                let ok = try await box.waitFor("the metrics endpoint") { () -> String? in
                    let a = Self.get(port: port, "/metrics", host: "127.0.0.1:\(port)")
                    return a.contains("pml_worker_up") ? a : nil
                }
                #expect(ok.hasPrefix("HTTP/1.1 200"))
                #expect(Self.get(port: port, "/metrics", host: "localhost:\(port)").contains("pml_worker_up"))
                #expect(Self.get(port: port, "/healthz", host: "[::1]:\(port)").hasPrefix("HTTP/1.1 200"))
                for path in ["/metrics", "/healthz", "/readyz"] {
                    let answer = Self.get(port: port, path, host: "rebound.example:\(port)")
                    #expect(answer.hasPrefix("HTTP/1.1 403") && !answer.contains("pml_worker_up"), "\(path): \(answer.prefix(200))")
                }
                #expect(Self.get(port: port, "/metrics", host: "127.0.0.1", method: "POST").hasPrefix("HTTP/1.1 405"))
            }
        }
    }
}
