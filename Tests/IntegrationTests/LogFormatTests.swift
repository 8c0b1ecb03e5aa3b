// Log options users set in the app file or on the command line: JSON lines, PM2's
// log_date_format, timestamps, and the prefixes `pml logs` prints.

import Foundation
import Testing

extension Integration {
    @Suite("Log formats")
    struct LogFormats {
        @Test("log_format = json writes one JSON object per line with app, worker, stream, time and message")
        func jsonLines() async throws {
            try await withSandbox { box in
                let file = try box.write("json.lua", """
                    return { name = "jl", cmd = { "sh", "-c", "echo 'say \\"hi\\"'; echo oops >&2; exec sleep 1000" },
                             log_format = "json" }
                    """)
                try await box.pmlOK("start", file)
                let rows = try await box.waitOnline("jl")
                let out = try await box.waitFor("a JSON line in the out log") { box.lines(box.logsDir + "/jl-out.log").first }
                let err = try await box.waitFor("a JSON line in the err log") { box.lines(box.logsDir + "/jl-err.log").first }
                let o = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
                #expect(o["app"] as? String == "jl")
                #expect(o["message"] as? String == "say \"hi\"")
                #expect(o["stream"] as? String == "out")
                #expect(o["worker"] as? Int == rows[0].id)
                #expect((o["time"] as? String)?.hasSuffix("Z") == true, "\(out)")
                let e = try #require(try JSONSerialization.jsonObject(with: Data(err.utf8)) as? [String: Any])
                #expect(e["stream"] as? String == "err" && e["message"] as? String == "oops", "\(err)")
            }
        }

        @Test("log_date_format prefixes lines with PM2's tokens; --timestamp with ISO time; pml logs --no-color is plain")
        func datedLines() async throws {
            try await withSandbox { box in
                let file = try box.write("dated.lua", """
                    return { name = "dated", cmd = { "sh", "-c", "echo dated-line; exec sleep 1000" },
                             log_date_format = "YYYY/MM/DD HH:mm:ss.SSS" }
                    """)
                try await box.pmlOK("start", file)
                try await box.pmlOK("start", "--name", "iso", "--timestamp", "--", "sh", "-c", "echo iso-line; exec sleep 1000")
                let dated = try await box.waitFor("the dated line") { box.lines(box.logsDir + "/dated-out.log").first }
                let pattern = try Regex(#"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}\.\d{3} dated-line$"#)
                #expect(dated.wholeMatch(of: pattern) != nil, "\(dated)")
                let iso = try await box.waitFor("the iso line") { box.lines(box.logsDir + "/iso-out.log").first }
                let isoPattern = try Regex(#"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z iso-line$"#)
                #expect(iso.wholeMatch(of: isoPattern) != nil, "\(iso)")
                let plain = try await box.pmlOK("logs", "iso", "--out", "--no-color", "--nostream")
                #expect(plain.stdout.contains("iso out | ") && !plain.stdout.contains("\u{1B}["), "\(plain)")
                let colored = try await box.pmlOK("logs", "iso", "--out", "--color", "--nostream")
                #expect(colored.stdout.contains("\u{1B}["), "\(colored)")
            }
        }
    }
}
