//! Per-request accounting of the HTTP middlewares, one native call per step.
//!
//! `calling` and `writing` live in the calling process's own slot (so a dead
//! worker's counts vanish with it); the totals and the series (requests and
//! duration buckets by method and status code) are shared by every process.
const std = @import("std");
const assert = std.debug.assert;
const counters = @import("counters.zig");

/// Finite bucket bounds of a series' duration histogram, at most; +Inf comes after them.
pub const bounds_max: u64 = 32;

pub const Board = extern struct {
    calling: ?*u64,
    writing: ?*u64,
    errors: ?*u64,
    exceptions: ?*u64,
    busy_us: ?*u64,
    /// The series descriptors of this board's table by number (requests.zig), null when the
    /// caller numbers none; entries it has not prepared have a null `requests`.
    numbered: ?[*]const Series = null,
    numbered_count: u64 = 0,

    /// Series `number` of the table, or null when there is no such prepared descriptor.
    pub fn seriesNumbered(board: *const Board, number: u64) ?*const Series {
        const numbered = board.numbered orelse return null;
        if (number >= board.numbered_count) return null;
        const series = &numbered[number];
        return if (series.requests == null) null else series;
    }
};

/// One (method, status code) of the shared table: its request count, and the
/// histogram of its durations with upper bounds in microseconds ("le").
pub const Series = extern struct {
    requests: ?*u64,
    /// The board's 5xx total when this series counts server errors, else null.
    errors: ?*u64,
    sum_us: ?*u64,
    first_bucket: ?[*]u8,
    stride: u64,
    bounds_us: ?[*]const u64,
    bounds: u64,

    fn bucket(series: *const Series, index: u64) *u64 {
        assert(index <= series.bounds);
        return @ptrCast(@alignCast(series.first_bucket.? + index * series.stride));
    }
};

pub fn valid(board: *const Board) bool {
    return board.calling != null and board.writing != null and board.errors != null and
        board.exceptions != null and board.busy_us != null;
}

pub fn seriesValid(series: *const Series) bool {
    if (series.requests == null or series.sum_us == null or series.first_bucket == null) return false;
    if (series.bounds_us == null or series.bounds == 0 or series.bounds > bounds_max) return false;
    if (series.stride < @sizeOf(u64) or series.stride % @sizeOf(u64) != 0) return false;
    const bounds = series.bounds_us.?[0..series.bounds];
    for (bounds[1..], bounds[0 .. bounds.len - 1]) |bound, previous| {
        if (bound <= previous) return false;
    }
    return true;
}

/// The first bucket whose bound is at least `duration_us`; `bounds.len` is +Inf.
pub fn bucketOf(bounds_us: []const u64, duration_us: u64) u64 {
    assert(bounds_us.len > 0 and bounds_us.len <= bounds_max);
    for (bounds_us, 0..) |bound_us, index| {
        if (duration_us <= bound_us) return index;
    }
    return bounds_us.len;
}

pub fn enter(board: *const Board) void {
    assert(valid(board));
    _ = counters.add(board.calling.?, 1);
}

// The totals move before the gauge drops, and readers read the gauges first:
// a reader that sees a request gone from a gauge also sees it counted.

/// The application returned before the response started: calling to writing.
pub fn respond(board: *const Board) void {
    assert(valid(board));
    _ = counters.add(board.writing.?, 1);
    _ = counters.sub(board.calling.?, 1);
}

/// The application returned and the response started: counted, then calling to writing.
pub fn respondCounted(board: *const Board, series: *const Series) void {
    assert(valid(board));
    count(series);
    respond(board);
}

/// The body was closed; `counted` says whether respondCounted already counted the request.
pub fn leave(board: *const Board, series: *const Series, duration_us: u64, counted: bool) void {
    assert(valid(board));
    if (!counted) count(series);
    observe(board, series, duration_us);
    _ = counters.sub(board.writing.?, 1);
}

/// The body was closed with no status known: writing - 1, nothing counted.
pub fn leaveUncounted(board: *const Board) void {
    assert(valid(board));
    _ = counters.sub(board.writing.?, 1);
}

/// The application raised: counted in `series` (a 5xx) and as an exception, without a body.
pub fn fail(board: *const Board, series: *const Series, duration_us: u64) void {
    assert(valid(board));
    _ = counters.add(board.exceptions.?, 1);
    count(series);
    observe(board, series, duration_us);
    _ = counters.sub(board.calling.?, 1);
}

fn count(series: *const Series) void {
    assert(series.requests != null);
    _ = counters.add(series.requests.?, 1);
    if (series.errors) |errors| _ = counters.add(errors, 1);
}

fn observe(board: *const Board, series: *const Series, duration_us: u64) void {
    _ = counters.add(board.busy_us.?, duration_us);
    _ = counters.add(series.sum_us.?, duration_us);
    const bounds_us = series.bounds_us.?[0..series.bounds];
    _ = counters.add(series.bucket(bucketOf(bounds_us, duration_us)), 1);
}

const testing = std.testing;

test "bucketOf: the first bound at least the duration, else +Inf" {
    const bounds_us = [_]u64{ 5_000, 10_000, 250_000 };
    try testing.expectEqual(@as(u64, 0), bucketOf(&bounds_us, 0));
    try testing.expectEqual(@as(u64, 0), bucketOf(&bounds_us, 5_000));
    try testing.expectEqual(@as(u64, 1), bucketOf(&bounds_us, 5_001));
    try testing.expectEqual(@as(u64, 2), bucketOf(&bounds_us, 250_000));
    try testing.expectEqual(@as(u64, 3), bucketOf(&bounds_us, 250_001));
    try testing.expectEqual(@as(u64, 3), bucketOf(&bounds_us, std.math.maxInt(u64)));
}

test "seriesValid refuses unsorted, empty and oversized bounds" {
    var slots: [8]u64 = @splat(0);
    const sorted = [_]u64{ 1, 2, 3 };
    const unsorted = [_]u64{ 1, 3, 3 };
    var series = Series{
        .requests = &slots[0],
        .errors = null,
        .sum_us = &slots[1],
        .first_bucket = @ptrCast(&slots[2]),
        .stride = 8,
        .bounds_us = &sorted,
        .bounds = 3,
    };
    try testing.expect(seriesValid(&series));
    series.bounds_us = &unsorted;
    try testing.expect(!seriesValid(&series));
    series.bounds_us = &sorted;
    series.bounds = 0;
    try testing.expect(!seriesValid(&series));
    series.bounds = bounds_max + 1;
    try testing.expect(!seriesValid(&series));
    series.bounds = 3;
    series.stride = 12;
    try testing.expect(!seriesValid(&series));
}

test "a request walks calling, writing, then its series and the totals" {
    var slots: [16]u64 = @splat(0);
    const board = Board{
        .calling = &slots[0],
        .writing = &slots[1],
        .errors = &slots[2],
        .exceptions = &slots[3],
        .busy_us = &slots[4],
    };
    const bounds_us = [_]u64{ 10, 100 };
    const ok = Series{
        .requests = &slots[5],
        .errors = null,
        .sum_us = &slots[6],
        .first_bucket = @ptrCast(&slots[7]),
        .stride = 8,
        .bounds_us = &bounds_us,
        .bounds = 2,
    };
    const server_error = Series{
        .requests = &slots[10],
        .errors = board.errors,
        .sum_us = &slots[11],
        .first_bucket = @ptrCast(&slots[12]),
        .stride = 8,
        .bounds_us = &bounds_us,
        .bounds = 2,
    };
    enter(&board);
    try testing.expectEqual(@as(u64, 1), slots[0]);
    respondCounted(&board, &ok);
    try testing.expectEqual([_]u64{ 0, 1 }, slots[0..2].*);
    try testing.expectEqual(@as(u64, 1), slots[5]);
    leave(&board, &ok, 50, true);
    enter(&board);
    respond(&board);
    leave(&board, &ok, 500, false);
    enter(&board);
    fail(&board, &server_error, 3);
    try testing.expectEqual([_]u64{ 0, 0, 1, 1, 553 }, slots[0..5].*);
    try testing.expectEqual([_]u64{ 2, 550, 0, 1, 1 }, slots[5..10].*);
    try testing.expectEqual([_]u64{ 1, 3, 1, 0, 0 }, slots[10..15].*);
}
