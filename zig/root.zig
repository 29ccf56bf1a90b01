//! The C ABI of libraindrops: thin exports over shm.zig and counters.zig.
//! Every function that can fail returns 0 or a negative status (see
//! status.zig); none panics across the boundary.
const std = @import("std");
const shm = @import("shm.zig");
const counters = @import("counters.zig");
const status = @import("status.zig");

const Segment = shm.Segment;
const Status = status.Status;
const invalid: Status = status.fromErrno(.INVAL);

export fn raindrops_stride() u32 {
    return shm.strideDetected();
}

export fn raindrops_counters_max() u64 {
    return shm.counters_max;
}

export fn raindrops_segment_bytes() u64 {
    return @sizeOf(Segment);
}

/// The validation code at `index` (0 ..), then 0: checked by raindrops/_native.py at import.
export fn raindrops_status_code(index: u32) Status {
    return status.validationCode(index);
}

/// The creating modes' allowed bits, which raindrops/counters.py copies and checks at import.
export fn raindrops_mode_allowed() u64 {
    return shm.mode_allowed;
}

/// The bits every creating mode must have, which raindrops/counters.py copies and checks at import.
export fn raindrops_mode_required() u64 {
    return shm.mode_required;
}

export fn raindrops_anonymous_create(size: u64, segment: *Segment) Status {
    return shm.createAnonymous(size, segment);
}

export fn raindrops_named_open(name: [*:0]const u8, size: u64, mode: u32, create: u32, segment: *Segment) Status {
    const name_slice = shm.nameSlice(name) orelse return invalid;
    return shm.openNamed(name_slice, size, mode, create != 0, segment);
}

export fn raindrops_named_unlink(name: [*:0]const u8) Status {
    const name_slice = shm.nameSlice(name) orelse return invalid;
    return shm.unlinkNamed(name_slice);
}

/// Sets the shared size (with `grow_only`, only raises it), growing the file
/// when needed; may map a new view into `segment`, and the caller keeps the
/// old view mapped while other threads may still use it.
export fn raindrops_resize(segment: *Segment, size: u64, grow_only: u32) Status {
    if (segment.base == null or segment.fd < 0) return invalid;
    return shm.resize(segment, size, grow_only != 0);
}

/// The shared size, checked against the view (mapping a larger one if another
/// process grew the segment) and the file; or a negative status.
export fn raindrops_sync(segment: *Segment) i64 {
    if (segment.base == null or segment.fd < 0) return invalid;
    return shm.sync(segment);
}

export fn raindrops_snapshot(segment: *const Segment, values: [*]u64, count: u64) Status {
    if (segment.base == null) return invalid;
    return shm.snapshot(segment, values, count);
}

export fn raindrops_restore(segment: *Segment, values: [*]const u64, count: u64) Status {
    if (segment.base == null) return invalid;
    return shm.restore(segment, values, count);
}

export fn raindrops_unmap(base: ?[*]u8, bytes: u64) Status {
    if (base == null or bytes == 0) return invalid;
    return shm.unmap(base.?, bytes);
}

/// Closes the segment's file; its views stay mapped until raindrops_unmap.
export fn raindrops_close(segment: *Segment) Status {
    return shm.closeFile(segment);
}

// The hot path: one counter pointer, prepared once by the caller from a
// segment view that stays mapped while the caller's segment object lives.

export fn raindrops_incr_one(counter: *u64) u64 {
    return counters.add(counter, 1);
}

export fn raindrops_decr_one(counter: *u64) u64 {
    return counters.sub(counter, 1);
}

export fn raindrops_incr(counter: *u64, delta: u64) u64 {
    return counters.add(counter, delta);
}

export fn raindrops_decr(counter: *u64, delta: u64) u64 {
    return counters.sub(counter, delta);
}

export fn raindrops_load(counter: *const u64) u64 {
    return counters.load(counter);
}

/// 1 where the caller's own aligned 8-byte load may replace raindrops_load (counters.zig).
export fn raindrops_plain_loads() u32 {
    return @intFromBool(counters.plain_loads_ordered);
}

export fn raindrops_store(counter: *u64, value: u64) void {
    counters.store(counter, value);
}

// Argument-free updates (counters.zig): a slot binds one counter pointer,
// prepared by the caller as above, to its own increment and decrement functions.

export fn raindrops_slots_max() u32 {
    return counters.slots_max;
}

/// The slot now bound to `counter`, or -ENOSPC when every slot is claimed.
export fn raindrops_slot_claim(counter: ?*u64) i64 {
    const pointer = counter orelse return invalid;
    if (@intFromPtr(pointer) % @alignOf(u64) != 0) return invalid;
    return counters.slotClaim(pointer) orelse status.fromErrno(.NOSPC);
}

export fn raindrops_slot_release(slot: u32) Status {
    return if (counters.slotRelease(slot)) status.ok else invalid;
}

/// The address of slot `slot`'s `u64 f(void)` increment (`decrement` 0) or decrement; 0 past the table.
export fn raindrops_slot_step(slot: u32, decrement: u32) usize {
    const step = counters.slotStep(slot, decrement != 0) orelse return 0;
    return @intFromPtr(step);
}

/// Floors for the benchmarks: the cost of a ctypes call that does nothing.
export fn raindrops_noop() void {}

export fn raindrops_noop_pointer(counter: *const u64) u64 {
    return @intFromPtr(counter);
}

// ---------------------------------------------------------------------------
// Listener statistics (Linux sock_diag netlink) and TCP_INFO.
// Every function returns 0 or -errno; the netlink calls do I/O and are called
// with the GIL released. One socket must not be used by two threads at once.

const netlink = @import("netlink.zig");
const inet_diag = @import("inet_diag.zig");
const unix_diag = @import("unix_diag.zig");
const diag = @import("diag.zig");
const tcp_info = @import("tcp_info.zig");

/// Opens a NETLINK_SOCK_DIAG socket (close-on-exec, receive timeout); fd or -errno.
export fn raindrops_diag_open() i32 {
    return netlink.open();
}

export fn raindrops_diag_close(fd: i32) Status {
    return netlink.close(fd);
}

/// Layout checks for the ctypes mirrors, and the per-call query bound.
export fn raindrops_tcp_query_bytes() u32 {
    return @sizeOf(inet_diag.Query);
}

export fn raindrops_tcp_result_bytes() u32 {
    return @sizeOf(inet_diag.Result);
}

export fn raindrops_unix_entry_bytes() u32 {
    return @sizeOf(unix_diag.Entry);
}

export fn raindrops_diag_queries_max() u32 {
    return @min(inet_diag.queries_max, unix_diag.queries_max);
}

/// results[i] answers queries[i]; `count` <= raindrops_diag_queries_max().
/// `states`: the sockets to dump, a non-empty subset of raindrops_tcp_states_all().
export fn raindrops_tcp_stats(fd: i32, queries: ?[*]const inet_diag.Query, results: ?[*]inet_diag.Result, count: u32, states: u32) Status {
    if (count == 0) return status.ok;
    if (queries == null or results == null or count > inet_diag.queries_max) return invalid;
    return inet_diag.queryStats(fd, queries.?[0..count], results.?[0..count], states);
}

/// LISTEN | ESTABLISHED as bits of a sock_diag state mask; each is one of raindrops_tcp_stats' states.
export fn raindrops_tcp_states_all() u32 {
    return inet_diag.states_all;
}

/// Every TCP listener; `count` is set to the results written, or on -ENOBUFS
/// to the capacity to retry with.
export fn raindrops_tcp_all_listeners(fd: i32, results: ?[*]inet_diag.Result, capacity: u32, count: *u64) Status {
    if (results == null and capacity != 0) return invalid;
    const slice: []inet_diag.Result = if (results) |pointer| pointer[0..capacity] else &.{};
    return inet_diag.allListeners(fd, slice, count);
}

/// entries carry the requested names; their counts are filled in.
export fn raindrops_unix_stats(fd: i32, entries: ?[*]unix_diag.Entry, count: u32) Status {
    if (count == 0) return status.ok;
    if (entries == null or count > unix_diag.queries_max) return invalid;
    return unix_diag.queryStats(fd, entries.?[0..count]);
}

export fn raindrops_unix_all_listeners(fd: i32, entries: ?[*]unix_diag.Entry, capacity: u32, count: *u64) Status {
    if (entries == null and capacity != 0) return invalid;
    const slice: []unix_diag.Entry = if (entries) |pointer| pointer[0..capacity] else &.{};
    return unix_diag.allListeners(fd, slice, count);
}

export fn raindrops_tcp_info_bytes() u32 {
    return tcp_info.buffer_bytes;
}

/// Copies struct tcp_info of `fd` into `buffer`; `length` is set to the bytes written.
export fn raindrops_tcp_info(fd: i32, buffer: ?[*]u8, capacity: u32, length: *u32) Status {
    length.* = 0;
    if (buffer == null or capacity == 0) return invalid;
    return tcp_info.read(fd, buffer.?[0..capacity], length);
}

export fn raindrops_tcp_listener_bytes() u32 {
    return @sizeOf(tcp_info.Listener);
}

/// A listening socket's address, accept queue and whether another socket may share its address.
export fn raindrops_tcp_listener(fd: i32, listener: *tcp_info.Listener) Status {
    return tcp_info.readListener(fd, listener);
}

/// listening[i] = 1 when fds[i] is a listening socket; `count` <= 65536.
export fn raindrops_listening(fds: ?[*]const i32, listening: ?[*]u8, count: u32) Status {
    if (count == 0) return status.ok;
    if (fds == null or listening == null or count > tcp_info.descriptors_max) return invalid;
    tcp_info.markListening(fds.?[0..count], listening.?[0..count]);
    return status.ok;
}

// ---------------------------------------------------------------------------
// Shared histograms and the middleware's per-request accounting. The Board
// and Histogram descriptors are built once per process by the caller and point
// into a segment view that stays mapped while the caller's segment object lives.

const histogram = @import("histogram.zig");
const scoreboard = @import("scoreboard.zig");

export fn raindrops_board_bytes() u32 {
    return @sizeOf(scoreboard.Board);
}

export fn raindrops_histogram_bytes() u32 {
    return @sizeOf(histogram.Histogram);
}

/// The words before a histogram's buckets, which raindrops/histogram.py copies and checks at import.
export fn raindrops_fields_before_buckets() u64 {
    return histogram.fields_before_buckets;
}

/// Compare-and-swap on one counter; returns the value found (== expected on success).
export fn raindrops_compare_swap(counter: *u64, expected: u64, desired: u64) u64 {
    return @cmpxchgStrong(u64, counter, expected, desired, .seq_cst, .seq_cst) orelse expected;
}

export fn raindrops_histogram_observe(descriptor: *const histogram.Histogram, value: u64) Status {
    if (!histogram.valid(descriptor)) return invalid;
    histogram.observe(descriptor, value);
    return status.ok;
}

export fn raindrops_board_valid(board: *const scoreboard.Board) u32 {
    return @intFromBool(scoreboard.valid(board));
}

export fn raindrops_series_bytes() u32 {
    return @sizeOf(scoreboard.Series);
}

export fn raindrops_series_valid(series: *const scoreboard.Series) u32 {
    return @intFromBool(scoreboard.seriesValid(series));
}

// The per-request calls below take descriptors that the caller validated once
// (raindrops_board_valid, raindrops_series_valid) and keeps alive.

export fn raindrops_board_enter(board: *const scoreboard.Board) void {
    scoreboard.enter(board);
}

export fn raindrops_board_respond(board: *const scoreboard.Board) void {
    scoreboard.respond(board);
}

export fn raindrops_board_respond_counted(
    board: *const scoreboard.Board,
    series: *const scoreboard.Series,
) void {
    scoreboard.respondCounted(board, series);
}

export fn raindrops_board_leave(
    board: *const scoreboard.Board,
    series: *const scoreboard.Series,
    duration_us: u64,
) void {
    scoreboard.leave(board, series, duration_us, true);
}

export fn raindrops_board_leave_counting(
    board: *const scoreboard.Board,
    series: *const scoreboard.Series,
    duration_us: u64,
) void {
    scoreboard.leave(board, series, duration_us, false);
}

export fn raindrops_board_fail(
    board: *const scoreboard.Board,
    series: *const scoreboard.Series,
    duration_us: u64,
) void {
    scoreboard.fail(board, series, duration_us);
}

// The WSGI middleware's requests in flight (requests.zig): a slot per request, taken by
// enter and given back by the token's own argument-free leave, which the server calls as the
// body's close(). Tokens come from raindrops_request_enter; a token not in flight is ignored.

const requests = @import("requests.zig");
const clock = @import("clock.zig");

export fn raindrops_requests_max() u32 {
    return requests.requests_max;
}

/// Boards with an argument-free enter function, at most (raindrops_request_enter_step).
export fn raindrops_request_boards_max() u32 {
    return requests.boards_max;
}

/// Tokens of requests in flight: a token is below it.
export fn raindrops_request_tokens_max() u32 {
    return requests.tokens_max;
}

/// The request's token, or raindrops_request_tokens_max() when every slot is taken (it is
/// counted in calling all the same).
export fn raindrops_request_enter(board: *const scoreboard.Board) i32 {
    return requests.enter(board);
}

/// The address of an `i32 f(void)` that is raindrops_request_enter(board); 0 when every board
/// slot holds another board. The board must stay alive while the function can be called.
export fn raindrops_request_enter_step(board: *const scoreboard.Board) usize {
    if (!scoreboard.valid(board)) return 0;
    const step = requests.enterStep(board) orelse return 0;
    return @intFromPtr(step);
}

/// respond with the series by number: the token | (number + 1) << log2(tokens_max).
export fn raindrops_request_respond_numbered(slot_and_series: u32) void {
    requests.respondNumbered(slot_and_series);
}

/// `series` null: the status is not known yet (see raindrops_request_leave).
export fn raindrops_request_respond(token: u32, series: ?*const scoreboard.Series) void {
    requests.respond(token, series);
}

/// `late`: the series of a status known only at close; ignored if respond had one.
export fn raindrops_request_leave(token: u32, late: ?*const scoreboard.Series) void {
    requests.leave(token, late);
}

/// `series` is required: a null one changes nothing.
export fn raindrops_request_fail(token: u32, series: ?*const scoreboard.Series) void {
    requests.fail(token, series orelse return);
}

/// The address of token `token`'s `void f(void)` leave; 0 past the tokens.
export fn raindrops_request_leave_step(token: u32) usize {
    const step = requests.leaveStep(token) orelse return 0;
    return @intFromPtr(step);
}

/// Called in a child after fork: its parent's requests in flight are not its own.
export fn raindrops_requests_reset() void {
    requests.reset();
}

/// The clock the request durations are measured with, in nanoseconds (CLOCK_MONOTONIC).
export fn raindrops_clock_ns() u64 {
    return clock.monotonicNs();
}

/// 1 when that clock is read through the kernel's vDSO, without a system call.
export fn raindrops_clock_vdso() u32 {
    return @intFromBool(clock.vdsoPresent());
}

// ---------------------------------------------------------------------------
// raindrops.metrics: f64 values and histograms with explicit upper bounds
// (float.zig). Value words are prepared pointers into a segment view that
// stays mapped while the caller's segment object lives; Buckets descriptors
// are validated once (raindrops_buckets_valid) and kept alive by the caller.

const float = @import("float.zig");

export fn raindrops_float_add(word: *u64, delta: f64) void {
    _ = float.add(word, delta);
}

export fn raindrops_float_add_one(word: *u64) void {
    _ = float.add(word, 1.0);
}

export fn raindrops_float_sub_one(word: *u64) void {
    _ = float.add(word, -1.0);
}

export fn raindrops_float_store(word: *u64, value: f64) void {
    float.store(word, value);
}

export fn raindrops_float_load(word: *const u64) f64 {
    return float.load(word);
}

export fn raindrops_float_fold_max(word: *u64, value: f64) void {
    float.foldMax(word, value);
}

export fn raindrops_float_fold_min(word: *u64, value: f64) void {
    float.foldMin(word, value);
}

export fn raindrops_float_ordered_key(value: f64) u64 {
    return float.orderedKey(value);
}

export fn raindrops_buckets_bytes() u32 {
    return @sizeOf(float.Buckets);
}

export fn raindrops_buckets_max() u64 {
    return float.buckets_max;
}

export fn raindrops_buckets_valid(descriptor: *const float.Buckets) u32 {
    return @intFromBool(float.valid(descriptor));
}

export fn raindrops_buckets_observe(descriptor: *const float.Buckets, value: f64) void {
    float.observe(descriptor, value);
}

test {
    _ = histogram;
    _ = scoreboard;
    _ = status;
    _ = netlink;
    _ = inet_diag;
    _ = unix_diag;
    _ = diag;
    _ = tcp_info;
    _ = counters;
    _ = shm;
    _ = float;
    _ = clock;
    _ = requests;
}
