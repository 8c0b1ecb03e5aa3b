// Sandbox helpers for the cluster-mode tests: describe's workers, waiting until workers serve,
// what `shared` workers inherited, ping. The HTTP client is in HTTPClient.swift, the load
// generator in LoadGenerator.swift.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Sandbox helpers for cluster apps

extension Sandbox {
    /// The raw `workers` of `pml describe <app> --json`.
    func rawWorkers(_ app: String) async throws -> [[String: Any]] {
        let (_, raw) = try await describe(app)
        return raw["workers"] as? [[String: Any]] ?? []
    }

    /// Waits until `count` workers of `app` are online and each serves at least one address
    /// (`serving` in describe --json): for Node workers, once their `listen()` went through pml.
    @discardableResult
    func waitServing(_ app: String, count: Int, timeout: Double = 15) async throws -> [Row] {
        try await waitFor("\(count) worker(s) of \(app) online and serving", timeout: timeout) {
            let rows = try await rows(app)
            guard rows.count == count, rows.allSatisfy({ $0.status == "online" && $0.pid.map(Proc.alive) == true })
            else { return nil }
            let workers = try await rawWorkers(app)
            let serving = workers.filter { (($0["serving"] as? [Any]) ?? []).isEmpty == false }
            return serving.count == count ? rows : nil
        }
    }

    /// What each worker of `app` running `ClusterFixture.pythonShared` found in its environment
    /// and fd table (`<dir>/<instance>.json`), once all `count` records match the pids in ls.
    func sharedRecords(_ app: String, in dir: String, count: Int) async throws -> [[String: Any]] {
        try await waitFor("\(count) env records of \(app)'s workers, matching ls") {
            var out: [[String: Any]] = []
            for row in try await rows(app) {
                guard let data = FileManager.default.contents(atPath: "\(dir)/\(row.instance).json"),
                      let rec = try JSONSerialization.jsonObject(with: data) as? [String: Any],
                      (rec["pid"] as? Int).map(Int32.init) == row.pid else { return nil }
                out.append(rec)
            }
            return out.count == count ? out : nil
        }
    }

    /// `pml ping` answers.
    func pingOK() async -> Bool {
        (try? await pml(["ping"], timeout: 5).ok) ?? false
    }
}
