//! The requests in flight in this process, for the WSGI middleware's per-request path.
//!
//! A request takes a slot of this table when it enters and gives it back when its body
//! closes. The slot keeps what Python would otherwise carry from call to call (the board, the
//! series once the status is known, the start time), because each argument of a ctypes call
//! costs tens of nanoseconds: entering takes no argument (each bound board has its own enter
//! function), responding takes one integer (the request's token and the series' number in the
//! board's table), and leaving takes none (each token has its own leave function, which the
//! middleware hands to the server as the body's close()). The tables live in the library's
//! own memory, so each process has its own after fork; nothing in them is shared.
//!
//! A slot moves free -> calling -> writing -> free, each move a compare-and-swap: a step on a
//! slot in another state changes nothing. A token is the slot and the slot's generation,
//! which each claim advances: a body closed twice, or any late step, finds the slot free or
//! in a newer generation and changes nothing. Slots are taken round-robin, so a slot comes
//! back to the same generation only after `generations` claims of it, each of which waits for
//! the cursor to pass every other free slot: a late close could end another request only if
//! thousands of requests entered the process since its first close.
const std = @import("std");
const assert = std.debug.assert;
const clock = @import("clock.zig");
const scoreboard = @import("scoreboard.zig");

const Board = scoreboard.Board;
const Series = scoreboard.Series;

/// Requests in flight in one process, at most; past it, enter() answers none and the caller
/// counts the request without a slot.
pub const requests_max: u32 = 1024;
/// Generations of a slot, told apart by tokens.
pub const generations: u32 = 4;
/// Tokens: a slot in the low bits, its generation above. A power of two, so that
/// respondNumbered's argument keeps a token in its low `token_bits` bits.
pub const tokens_max: u32 = requests_max * generations;
pub const token_bits = std.math.log2_int(u32, tokens_max);
/// What enter answers when every slot is taken: one past the last token.
pub const none: i32 = tokens_max;

comptime {
    assert(std.math.isPowerOfTwo(requests_max));
    assert(std.math.isPowerOfTwo(generations));
}

const State = enum(u32) { free, claimed, calling, writing };

const Request = struct {
    state: State = .free,
    generation: u32 = 0,
    board: ?*const Board = null,
    series: ?*const Series = null,
    started_ns: u64 = 0,
};

var table: [requests_max]Request = @splat(.{});
var cursor: u32 = 0;

fn move(request: *Request, from: State, to: State) bool {
    return @cmpxchgStrong(State, &request.state, from, to, .acquire, .monotonic) == null;
}

fn publish(request: *Request, state: State) void {
    @atomicStore(State, &request.state, state, .release);
}

fn durationUs(request: *const Request) u64 {
    return (clock.monotonicNs() -% request.started_ns) / std.time.ns_per_us;
}

/// Counts a request in `board` (calling + 1) and gives it a slot: its token, or `none` when
/// every slot is taken (the request is counted all the same).
pub fn enter(board: *const Board) i32 {
    assert(scoreboard.valid(board));
    scoreboard.enter(board);
    const first = @atomicRmw(u32, &cursor, .Add, 1, .monotonic);
    for (0..requests_max) |offset| {
        const index: u32 = @intCast((@as(usize, first) + offset) % requests_max);
        const request = &table[index];
        if (@atomicLoad(State, &request.state, .monotonic) != .free) continue;
        if (!move(request, .free, .claimed)) continue;
        const generation = (request.generation + 1) % generations;
        @atomicStore(u32, &request.generation, generation, .monotonic);
        request.board = board;
        request.series = null;
        request.started_ns = clock.monotonicNs();
        publish(request, .calling);
        return @intCast(generation * requests_max + index);
    }
    return none;
}

/// The slot of `token` while `token` is its current generation's: a token past the table or
/// of another generation has none.
fn slot(token: u32) ?*Request {
    if (token >= tokens_max) return null;
    const request = &table[token % requests_max];
    if (@atomicLoad(u32, &request.generation, .monotonic) != token / requests_max) return null;
    return request;
}

/// The application returned: calling to writing, counted in `series` if the status is known.
pub fn respond(token: u32, series: ?*const Series) void {
    const request = slot(token) orelse return;
    if (!move(request, .calling, .claimed)) return;
    respondClaimed(request, series);
}

/// respond() with one argument: the token in the low `token_bits` bits, above them the number
/// of the series in the board's table plus one (0: the status is not known yet).
pub fn respondNumbered(token_and_series: u32) void {
    const token = token_and_series & (tokens_max - 1);
    const number = token_and_series >> token_bits;
    const request = slot(token) orelse return;
    if (!move(request, .calling, .claimed)) return;
    const series = if (number == 0) null else request.board.?.seriesNumbered(number - 1);
    respondClaimed(request, series);
}

fn respondClaimed(request: *Request, series: ?*const Series) void {
    assert(request.state == .claimed);
    request.series = series;
    if (series) |known| {
        scoreboard.respondCounted(request.board.?, known);
    } else {
        scoreboard.respond(request.board.?);
    }
    publish(request, .writing);
}

/// The body was closed: its duration observed in the series respond() counted in (or in
/// `late`, the series of a status that came after respond), writing - 1, the slot freed.
pub fn leave(token: u32, late: ?*const Series) void {
    const request = slot(token) orelse return;
    if (!move(request, .writing, .claimed)) return;
    const board = request.board.?;
    if (request.series) |series| {
        scoreboard.leave(board, series, durationUs(request), true);
    } else if (late) |series| {
        scoreboard.leave(board, series, durationUs(request), false);
    } else {
        scoreboard.leaveUncounted(board);
    }
    free(request);
}

/// The application raised: counted in `series` (a 5xx) and as an exception, calling - 1.
pub fn fail(token: u32, series: *const Series) void {
    const request = slot(token) orelse return;
    if (!move(request, .calling, .claimed)) return;
    scoreboard.fail(request.board.?, series, durationUs(request));
    free(request);
}

fn free(request: *Request) void {
    request.board = null;
    request.series = null;
    publish(request, .free);
}

/// Frees every slot: in a child after fork, the parent's requests are not this process's.
pub fn reset() void {
    for (&table) |*request| free(request);
    @atomicStore(u32, &cursor, 0, .monotonic);
}

// Boards bound to argument-free enter functions: a slot per board, never released (a process
// binds a board per middleware scoreboard), so that a function handed out always has its
// board. A board freed and another made at its address reuse its slot.

pub const boards_max: u32 = 64;
/// Each slot's board address, 0 while free.
var boards: [boards_max]usize = @splat(0);

pub const Enter = *const fn () callconv(.c) i32;

fn BoardEnter(comptime board_slot: u32) type {
    return struct {
        fn enterBoard() callconv(.c) i32 {
            const address = @atomicLoad(usize, &boards[board_slot], .acquire);
            assert(address != 0);
            return enter(@ptrFromInt(address));
        }
    };
}

/// enter(board) as a function without arguments: the board's slot's (taken if new), or null
/// when every slot holds another board. Two threads binding one board at once may take two
/// slots; both functions count in it.
pub fn enterStep(board: *const Board) ?Enter {
    assert(scoreboard.valid(board));
    const wanted = @intFromPtr(board);
    for (&boards, 0..) |*bound, board_slot| {
        const found = @cmpxchgStrong(usize, bound, 0, wanted, .acq_rel, .acquire) orelse 0;
        if (found == 0 or found == wanted) return enterOf(@intCast(board_slot));
    }
    return null;
}

fn enterOf(board_slot: u32) Enter {
    @setEvalBranchQuota(boards_max * 16);
    return switch (board_slot) {
        inline 0...boards_max - 1 => |known| &BoardEnter(known).enterBoard,
        else => unreachable,
    };
}

pub const Leave = *const fn () callconv(.c) void;

fn TokenLeave(comptime token: u32) type {
    return struct {
        fn leaveToken() callconv(.c) void {
            leave(token, null);
        }
    };
}

/// The address of token `token`'s argument-free leave(), null past the tokens: a switch, where
/// a table of function pointers would need a relocation per entry at load time.
pub fn leaveStep(token: u32) ?Leave {
    @setEvalBranchQuota(tokens_max * 16);
    return switch (token) {
        inline 0...tokens_max - 1 => |known| &TokenLeave(known).leaveToken,
        else => null,
    };
}

const testing = std.testing;

const Fixture = struct {
    words: [24]u64 = @splat(0),
    bounds_us: [2]u64 = .{ 1_000_000_000, 2_000_000_000 },
    board: Board = undefined,
    series: Series = undefined,

    fn init(fixture: *Fixture) void {
        const words = &fixture.words;
        fixture.board = .{
            .calling = &words[0],
            .writing = &words[1],
            .errors = &words[2],
            .exceptions = &words[3],
            .busy_us = &words[4],
        };
        fixture.series = .{
            .requests = &words[5],
            .errors = null,
            .sum_us = &words[6],
            .first_bucket = @ptrCast(&words[7]),
            .stride = 8,
            .bounds_us = &fixture.bounds_us,
            .bounds = 2,
        };
    }
};

test "a request walks calling, writing, then its series; a second close changes nothing" {
    reset();
    var fixture: Fixture = .{};
    fixture.init();
    const index = enter(&fixture.board);
    try testing.expect(index >= 0);
    try testing.expectEqual([_]u64{ 1, 0 }, fixture.words[0..2].*);
    respond(@intCast(index), &fixture.series);
    try testing.expectEqual([_]u64{ 0, 1 }, fixture.words[0..2].*);
    const step = leaveStep(@intCast(index)).?;
    step();
    step();
    respond(@intCast(index), &fixture.series);
    try testing.expectEqual([_]u64{ 0, 0 }, fixture.words[0..2].*);
    try testing.expectEqual(@as(u64, 1), fixture.words[5]);
    try testing.expectEqual(@as(u64, 1), fixture.words[7]);
    try testing.expectEqual(fixture.words[4], fixture.words[6]);
}

test "a status known only at close is counted then; a failure leaves no writing" {
    reset();
    var fixture: Fixture = .{};
    fixture.init();
    const late = enter(&fixture.board);
    respond(@intCast(late), null);
    try testing.expectEqual(@as(u64, 0), fixture.words[5]);
    leave(@intCast(late), &fixture.series);
    const failed = enter(&fixture.board);
    fail(@intCast(failed), &fixture.series);
    fail(@intCast(failed), &fixture.series);
    try testing.expectEqual([_]u64{ 0, 0, 0, 1 }, fixture.words[0..4].*);
    try testing.expectEqual(@as(u64, 2), fixture.words[5]);
    try testing.expectEqual(@as(u64, 2), fixture.words[7]);
}

test "slots run out: the request is counted without one; tokens past the table do nothing" {
    reset();
    var fixture: Fixture = .{};
    fixture.init();
    for (0..requests_max) |_| try testing.expect(enter(&fixture.board) != none);
    try testing.expectEqual(none, enter(&fixture.board));
    try testing.expectEqual(@as(u64, requests_max + 1), fixture.words[0]);
    respond(tokens_max, &fixture.series);
    leave(tokens_max, null);
    try testing.expectEqual(@as(?Leave, null), leaveStep(tokens_max));
    try testing.expectEqual(@as(u64, 0), fixture.words[5]);
    reset();
    try testing.expect(enter(&fixture.board) != none);
    reset();
}

test "a board's enter function counts in it; its respond takes the series' number" {
    reset();
    var fixture: Fixture = .{};
    fixture.init();
    const numbered = [_]Series{ .{
        .requests = null,
        .errors = null,
        .sum_us = null,
        .first_bucket = null,
        .stride = 8,
        .bounds_us = null,
        .bounds = 0,
    }, fixture.series };
    fixture.board.numbered = &numbered;
    fixture.board.numbered_count = numbered.len;
    const step = enterStep(&fixture.board).?;
    try testing.expectEqual(step, enterStep(&fixture.board).?);
    const index: u32 = @intCast(step());
    respondNumbered(index | (1 + 1) << token_bits);
    try testing.expectEqual([_]u64{ 0, 1 }, fixture.words[0..2].*);
    try testing.expectEqual(@as(u64, 1), fixture.words[5]);
    leaveStep(index).?();
    // numbers of no prepared descriptor, or past the table, count nothing but move the gauges
    for ([_]u32{ 0, 1, 3, std.math.maxInt(u32) >> token_bits }) |number| {
        const other: u32 = @intCast(step());
        respondNumbered(other | number << token_bits);
        leaveStep(other).?();
    }
    try testing.expectEqual([_]u64{ 0, 0 }, fixture.words[0..2].*);
    try testing.expectEqual(@as(u64, 1), fixture.words[5]);
    respondNumbered(tokens_max - 1);
    reset();
}

test "a late step of an earlier generation changes nothing in the slot's next request" {
    reset();
    var fixture: Fixture = .{};
    fixture.init();
    const first: u32 = @intCast(enter(&fixture.board));
    respond(first, &fixture.series);
    leave(first, null);
    // the slot's next claim: every other slot is passed first, round-robin
    var tokens: [requests_max]u32 = undefined;
    for (&tokens) |*token| token.* = @intCast(enter(&fixture.board));
    const again = tokens[requests_max - 1];
    try testing.expectEqual(first % requests_max, again % requests_max);
    try testing.expect(again != first);
    for (tokens) |token| respond(token, &fixture.series);
    leaveStep(first).?();
    respond(first, null);
    fail(first, &fixture.series);
    try testing.expectEqual(@as(u64, requests_max), fixture.words[1]);
    for (tokens) |token| leaveStep(token).?();
    try testing.expectEqual([_]u64{ 0, 0 }, fixture.words[0..2].*);
    try testing.expectEqual(@as(u64, requests_max + 1), fixture.words[5]);
    reset();
}
