import FoundationEssentials
import Glibc
import Logging
import PMLCore
import PMLPosix

/// Serves `pml metrics` over HTTP on a loopback address, for Prometheus to scrape. The address
/// comes from `$PML_HOME/config.json` (`{"metrics_listen": "127.0.0.1:9615"}`) or the daemon's
/// `PML_METRICS_LISTEN`; anything but a loopback host is refused. `/healthz` and `/readyz` are
/// answered here too (see `HealthProbe`), for orchestrators probing `pml run`.
final class MetricsServer {
    /// Scrapes served at once; more are closed at once (any local user can reach the port).
    static let maxExchanges = 64

    private let fd: Int32
    private let loop: EventLoop
    private let render: (String) -> HTTPResponse
    private var handle: IOHandle?
    private var exchanges = 0
    private let backoff: AcceptBackoff

    /// The configured address, or nil when metrics are not served. Throws for a bad address.
    static func configuredAddress(paths: PMLPaths, environment: [String: String]) throws(SystemError) -> ListenAddress? {
        try HomeConfig.loopbackAddress("metrics_listen", environmentName: "PML_METRICS_LISTEN", paths: paths, environment: environment)
    }

    init(address: ListenAddress, loop: EventLoop, render: @escaping (String) -> HTTPResponse) throws(SystemError) {
        guard case .tcp(let host, let port) = address else { throw SystemError("metrics_listen", errno: EINVAL) }
        fd = try ListeningSocket.tcp(host: host, port: port, nonBlocking: true).fd
        self.loop = loop
        self.render = render
        backoff = AcceptBackoff(loop: loop, logger: Logger(label: "pml"), what: "metrics listener")
        handle = try loop.register(fd: fd, events: [.readable]) { [unowned self] _ in self.acceptAll() }
    }

    private func acceptAll() {
        while true {
            guard let client = UnixSocket.accept(fd) else {
                backoff.pauseIfOutOfDescriptors(handle) { [weak self] in self?.resume() }
                return
            }
            guard exchanges < Self.maxExchanges else {
                closeFD(client)
                continue
            }
            exchanges += 1
            MetricsExchange.start(fd: client, loop: loop, render: render) { [weak self] in self?.exchanges -= 1 }
        }
    }

    private func resume() {
        if let handle { loop.modify(handle, events: [.readable]) }
    }
}

/// One scrape: read the request head, answer with the metrics, close. Lives until then.
private final class MetricsExchange {
    private let fd: Int32
    private let loop: EventLoop
    private let render: (String) -> HTTPResponse
    private var handle: IOHandle?
    private var request: [UInt8] = []
    private var response: [UInt8] = []
    private var timer: TimerHandle?
    private var onClose: () -> Void = {}

    static func start(fd: Int32, loop: EventLoop, render: @escaping (String) -> HTTPResponse, onClose: @escaping () -> Void) {
        let exchange = MetricsExchange(fd: fd, loop: loop, render: render)
        exchange.onClose = onClose
        // The registration's closure holds the exchange until it closes itself.
        exchange.handle = try? loop.register(fd: fd, events: [.readable]) { events in exchange.ready(events) }
        if exchange.handle == nil { return exchange.close() }
        // A client that never finishes its request is dropped.
        exchange.timer = loop.schedule(after: 5000) { exchange.close() }
    }

    private init(fd: Int32, loop: EventLoop, render: @escaping (String) -> HTTPResponse) {
        self.fd = fd
        self.loop = loop
        self.render = render
    }

    private func ready(_ events: IOEvents) {
        if response.isEmpty {
            var chunk = [UInt8](repeating: 0, count: 4096)
            switch chunk.withUnsafeMutableBytes({ (try? readSome(fd, into: $0)) ?? .eof }) {
            case .wouldBlock: return
            case .eof: return close()
            case .data(let n): request.append(contentsOf: chunk[0..<n])
            }
            let head = String(decoding: request, as: UTF8.self)
            guard head.contains("\r\n\r\n") || head.contains("\n\n") || request.count > 8192 else { return }
            let target = head.split(separator: " ", maxSplits: 2).dropFirst().first.map(String.init) ?? "/"
            response = head.hasPrefix("GET ") ? render(HTTPRequest(method: "GET", target: target).path).bytes
                : HTTPResponse.text(405, "only GET is served here").bytes
        }
        let n = response.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
        if n > 0 { response.removeFirst(n) }
        if response.isEmpty || (n < 0 && errno != EAGAIN) { return close() }
        if let handle { loop.modify(handle, events: [.writable]) }
    }

    private func close() {
        onClose()
        onClose = {}
        if let timer { loop.cancel(timer) }
        timer = nil
        if let handle { loop.unregister(handle) }
        handle = nil
        closeFD(fd)
    }
}
