//! Per-request accounting of the WSGI middleware, one native call per step.
//!
//! `calling` and `writing` live in the calling process's own slot (so a dead
//! worker's counts vanish with it); the totals and the duration histogram are
//! shared by every process.
const std = @import("std");
const assert = std.debug.assert;
const counters = @import("counters.zig");
const histogram = @import("histogram.zig");

pub const Board = extern struct {
    calling: ?*u64,
    writing: ?*u64,
    requests: ?*u64,
    errors: ?*u64,
    busy_us: ?*u64,
    durations_us: histogram.Histogram,
};

pub fn valid(board: *const Board) bool {
    return board.calling != null and board.writing != null and board.requests != null and
        board.errors != null and board.busy_us != null and histogram.valid(&board.durations_us);
}

pub fn enter(board: *const Board) void {
    assert(valid(board));
    _ = counters.add(board.calling.?, 1);
}

/// The application returned: the request moves from calling to writing.
pub fn respond(board: *const Board) void {
    assert(valid(board));
    _ = counters.add(board.writing.?, 1);
    _ = counters.sub(board.calling.?, 1);
}

// The totals move before the gauge drops, and readers read the gauges first:
// a reader that sees a request gone from `writing` also sees it counted.

/// The body was closed: the request is over.
pub fn leave(board: *const Board, duration_us: u64) void {
    assert(valid(board));
    finish(board, duration_us);
    _ = counters.sub(board.writing.?, 1);
}

/// The application raised: the request is over without a body.
pub fn fail(board: *const Board, duration_us: u64) void {
    assert(valid(board));
    _ = counters.add(board.errors.?, 1);
    finish(board, duration_us);
    _ = counters.sub(board.calling.?, 1);
}

fn finish(board: *const Board, duration_us: u64) void {
    _ = counters.add(board.requests.?, 1);
    _ = counters.add(board.busy_us.?, duration_us);
    histogram.observe(&board.durations_us, duration_us);
}

test "a request walks calling, writing, then the totals" {
    var slots: [16]u64 = @splat(0);
    const board = Board{
        .calling = &slots[0],
        .writing = &slots[1],
        .requests = &slots[2],
        .errors = &slots[3],
        .busy_us = &slots[4],
        .durations_us = .{ .first = @ptrCast(&slots[5]), .stride = 8, .buckets = 4 },
    };
    enter(&board);
    try std.testing.expectEqual(@as(u64, 1), slots[0]);
    respond(&board);
    try std.testing.expectEqual(@as(u64, 0), slots[0]);
    try std.testing.expectEqual(@as(u64, 1), slots[1]);
    leave(&board, 3);
    enter(&board);
    fail(&board, 1);
    try std.testing.expectEqual([_]u64{ 0, 0, 2, 1, 4 }, slots[0..5].*);
    try std.testing.expectEqual(@as(u64, 2), slots[5]);
    try std.testing.expectEqual(@as(u64, 4), slots[6]);
    try std.testing.expectEqual(@as(u64, 10), slots[7]);
}
