import FoundationEssentials
import PMLCore
import PMLPosix

/// pml's end of a worker's IPC socket: one JSON value per line, Node's own format.
final class IPCChannel {
    /// A line longer than this is garbage: the channel is cut off rather than buffered without bound.
    static let maxLineBytes = 1 << 20

    private let fd: Int32
    private weak var loop: EventLoop?
    private var handle: IOHandle?
    private var buffer: [UInt8] = []
    private let onMessage: (ScriptValue) -> Void
    private let onGarbage: (String) -> Void

    init(fd: Int32, loop: EventLoop, onMessage: @escaping (ScriptValue) -> Void,
         onGarbage: @escaping (String) -> Void) throws(SystemError) {
        self.fd = fd
        self.loop = loop
        self.onMessage = onMessage
        self.onGarbage = onGarbage
        setNonBlocking(fd)
        handle = try loop.register(fd: fd, events: [.readable]) { [unowned self] _ in self.readable() }
    }

    private func readable() {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let result = chunk.withUnsafeMutableBytes { (try? readSome(fd, into: $0)) ?? .eof }
        switch result {
        case .wouldBlock:
            return
        case .eof:
            close()
            return
        case .data(let n):
            buffer.append(contentsOf: chunk[0..<n])
        }
        while let nl = buffer.firstIndex(of: UInt8(ascii: "\n")) {
            let line = Data(buffer[..<nl])
            buffer.removeSubrange(...nl)
            if line.isEmpty { continue }
            guard let value = try? JSONDecoder().decode(ScriptValue.self, from: line) else {
                cutOff("a line on its IPC channel is not JSON")
                return
            }
            onMessage(value)
            if handle == nil { return }
        }
        if buffer.count > Self.maxLineBytes { cutOff("its IPC channel sent a line over 1 MiB") }
    }

    private func cutOff(_ why: String) {
        close()
        onGarbage(why)
    }

    /// Stops reading and closes pml's end; the worker sees EOF on its channel.
    func close() {
        if let handle { loop?.unregister(handle) }
        handle = nil
        closeFD(fd)
        buffer.removeAll()
    }

    deinit {
        if handle != nil { close() }
    }
}
