// L2CAP channels of the simulated air as Foundation streams, the way CoreBluetooth hands them to apps
// (`CBL2CAPChannel.inputStream` / `.outputStream`): bytes go to the air as `data` messages on the channel and come
// back the same way (core/air/PROTOCOL.md, "L2CAP channels"). Events reach the stream's delegate on the queue given
// with `CFReadStreamSetDispatchQueue` / `CFWriteStreamSetDispatchQueue`.
//
// Modelled: ordered bytes both ways, the end of the stream when the other end closes or the phones part
// (`closed`), an error on the output stream then. Not modelled: a bounded send buffer (the air has no flow control
// for channels: a write takes up to 64 KiB at once, and the connection to the air carries it).

import Dispatch
import Foundation

/// One L2CAP channel on the air, shared by this end's input and output streams.
final class AirChannel: @unchecked Sendable {
    /// The largest write the air takes in one `data` message.
    static let maxWrite = 64 * 1024

    let id: Int
    private weak var phone: SimulatedPhone?
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    /// The other end closed it, or the phones parted: no more bytes will come and none can go.
    private var ended = false
    /// This end closed it.
    private var closed = false
    weak var reader: AirInputStream?
    weak var writer: AirOutputStream?

    init(id: Int, phone: SimulatedPhone) {
        self.id = id
        self.phone = phone
    }

    private func locked<T>(_ body: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }

    /// Bytes from the other end.
    func received(_ data: Data) {
        guard locked({ () -> Bool in
            guard !closed else { return false }
            bytes.append(contentsOf: data)
            return true
        }) else { return }
        reader?.signal(.hasBytesAvailable)
    }

    /// The other end closed the channel, or the phones parted.
    func endedByPeer() {
        let first = locked { () -> Bool in
            defer { ended = true }
            return !ended
        }
        guard first else { return }
        reader?.signal(.endEncountered)
        writer?.signal(.errorOccurred)
    }

    var available: Int { locked { bytes.count } }
    /// Nothing more to read, ever.
    var atEnd: Bool { locked { ended && bytes.isEmpty } }
    var writable: Bool { locked { !ended && !closed } }

    func read(_ into: UnsafeMutablePointer<UInt8>, _ max: Int) -> Int {
        locked {
            let n = min(max, bytes.count)
            for i in 0..<n { into[i] = bytes[i] }
            bytes.removeFirst(n)
            return n
        }
    }

    func write(_ data: UnsafePointer<UInt8>, _ count: Int) -> Int {
        guard writable, let phone else { return -1 }
        let n = min(count, AirChannel.maxWrite)
        guard n > 0 else { return 0 }
        let chunk = Data(bytes: data, count: n)
        guard phone.send(["op": "data", "chan": id, "bytes": chunk.base64EncodedString()]) else { return -1 }
        return n
    }

    /// This end closes the channel (either stream's `close`): the other end is told once.
    func close() {
        let tell = locked { () -> Bool in
            defer { closed = true }
            return !closed && !ended
        }
        if tell { phone?.closeChannel(id) }
    }
}

/// A stream an event is for, handed to its queue (streams are touched only there).
private final class WeakStream: @unchecked Sendable {
    weak var stream: Stream?
    init(_ stream: Stream) { self.stream = stream }
}

/// What each stream of a channel keeps: its status, its delegate, and the queue its events go to. The status is read
/// by the air's reader thread (to decide whether an event is delivered) and set on the stream's queue: both under the
/// lock.
private final class StreamEnd: @unchecked Sendable {
    private let lock = NSLock()
    private var queue: DispatchQueue?
    private var pending: [Stream.Event] = []
    private var currentStatus: Stream.Status = .notOpen
    weak var delegate: StreamDelegate?

    var status: Stream.Status {
        get { lock.lock(); defer { lock.unlock() }; return currentStatus }
        set { lock.lock(); defer { lock.unlock() }; currentStatus = newValue }
    }

    /// Moves from `from` to `to`; false if the status was something else.
    func move(from: Stream.Status, to: Stream.Status) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard currentStatus == from else { return false }
        currentStatus = to
        return true
    }

    /// Deliver `stream`'s events on `queue` from now on (`nil`: hold them), starting with those held.
    func deliver(on queue: DispatchQueue?, stream: Stream) {
        lock.lock()
        self.queue = queue
        let backlog = queue == nil ? [] : pending
        if queue != nil { pending = [] }
        lock.unlock()
        for event in backlog { post(event, stream: stream) }
    }

    /// Tell `stream`'s delegate of `event` on its queue, if the stream is open (or just opened).
    func signal(_ event: Stream.Event, stream: Stream) {
        if event == .openCompleted || status == .open { post(event, stream: stream) }
    }

    private func post(_ event: Stream.Event, stream: Stream) {
        lock.lock()
        let queue = self.queue
        if queue == nil { pending.append(event) }
        lock.unlock()
        let target = WeakStream(stream)
        queue?.async {
            guard let stream = target.stream, let delegate = stream.delegate else { return }
            delegate.stream(stream, handle: event)
        }
    }
}

final class AirInputStream: InputStream, @unchecked Sendable {
    private let channel: AirChannel
    private let end = StreamEnd()

    init(_ channel: AirChannel) {
        self.channel = channel
        super.init(data: Data())
        channel.reader = self
    }

    override var delegate: StreamDelegate? {
        get { end.delegate }
        set { end.delegate = newValue }
    }

    override var streamStatus: Stream.Status { end.status }
    func deliver(on queue: DispatchQueue?) { end.deliver(on: queue, stream: self) }
    func signal(_ event: Stream.Event) { end.signal(event, stream: self) }

    override func open() {
        guard end.move(from: .notOpen, to: .open) else { return }
        signal(.openCompleted)
        if channel.available > 0 { signal(.hasBytesAvailable) }
        if channel.atEnd { signal(.endEncountered) }
    }

    override func close() {
        end.status = .closed
        channel.close()
    }

    override var hasBytesAvailable: Bool { end.status == .open && channel.available > 0 }

    override func read(_ buffer: UnsafeMutablePointer<UInt8>, maxLength len: Int) -> Int {
        guard end.status == .open else { return -1 }
        let n = channel.read(buffer, len)
        if n == 0, channel.atEnd { _ = end.move(from: .open, to: .atEnd) }
        return n
    }
}

final class AirOutputStream: OutputStream, @unchecked Sendable {
    private let channel: AirChannel?
    private let end = StreamEnd()

    init(_ channel: AirChannel) {
        self.channel = channel
        super.init(toMemory: ())
        channel.writer = self
    }

    /// Foundation requires it; a stream made this way is on no channel and takes nothing.
    required init(toMemory: ()) {
        channel = nil
        super.init(toMemory: ())
    }

    override var delegate: StreamDelegate? {
        get { end.delegate }
        set { end.delegate = newValue }
    }

    override var streamStatus: Stream.Status { end.status }
    func deliver(on queue: DispatchQueue?) { end.deliver(on: queue, stream: self) }
    func signal(_ event: Stream.Event) { end.signal(event, stream: self) }

    override func open() {
        guard end.move(from: .notOpen, to: .open) else { return }
        signal(.openCompleted)
        if channel?.writable ?? false { signal(.hasSpaceAvailable) }
    }

    override func close() {
        end.status = .closed
        channel?.close()
    }

    override var hasSpaceAvailable: Bool { end.status == .open && (channel?.writable ?? false) }

    override func write(_ buffer: UnsafePointer<UInt8>, maxLength len: Int) -> Int {
        guard end.status == .open, let channel else { return -1 }
        let n = channel.write(buffer, len)
        if n < 0 { end.status = .error }
        return n
    }
}
