"""A persistent thread pool written in LLVM IR, linked into every kernel module.

Dispatching parallel work through Python threads costs 20-70 µs, as much as a whole decode GEMV
(FACTS.md), so the pool lives in the generated code: workers are pthreads started on first use;
between jobs they spin briefly, then sleep on a futex. A parallel loop's body is outlined into a
closure `void body(i64 task, i64 ntasks, ptr env)` and handed to `llmd_parallel_for`.

Protocol (one job at a time, guarded by the `busy` try-lock; a second caller that finds the pool
busy runs its job serially as one task, so concurrent callers never deadlock):
- The caller stores fn/env/ntasks, then publishes `claim = gen << 32 | ntasks` (release) and
  bumps the futex word `gen`, waking sleepers.
- Everyone, the caller included, claims tasks by decrementing `claim` with a cmpxchg that also
  checks the generation, so a worker that wakes late never takes a task from a newer job, and
  reads fn/env only after a successful claim (the job cannot finish, hence cannot be replaced,
  while it holds an unfinished task). A caller that finds no worker awake runs every task itself.
- Each finished task increments `done`; the caller waits (spin, then futex) until done == ntasks,
  and whoever finishes the last task wakes the caller if it went to sleep. `main_sleeping`/`done`
  and `sleepers`/`gen` are Dekker pairs under seq_cst, so no wake-up is lost.

Exported besides `llmd_parallel_for`: `llmd_pool_configure(nthreads, spin)` (stops the workers;
they restart lazily), `llmd_pool_shutdown()` (joins them: call it before freeing the code), and
`llmd_pool_stat(what, slot)` (0: running workers; 1: OS thread id of worker `slot`; 2: tasks run by
`slot`, slot 0 being whichever thread called in), and `llmd_pool_forget()` for a forked child,
whose copy of the pool has no threads behind it. (Until then the child still computes correctly:
a caller runs every task nobody else claims.)
"""

from __future__ import annotations

from llm_deploy.targets.llvm.host import arch_of

MAX_THREADS = 256
DEFAULT_SPIN = 20000  # pause iterations before sleeping: ~50-150 µs on current x86 cores

PARALLEL_FOR = "llmd_parallel_for"
CONFIGURE = "llmd_pool_configure"
SHUTDOWN = "llmd_pool_shutdown"
STAT = "llmd_pool_stat"
FORGET = "llmd_pool_forget"

_PAUSE_DECLS = {
    "x86_64": "declare void @llvm.x86.sse2.pause()",
    "aarch64": "declare void @llvm.aarch64.hint(i32)",
}

_POOL_IR = r"""
@pool.nthreads = internal global i32 1, align 64
@pool.spin = internal global i32 SPIN, align 4
@pool.split = internal global i32 1, align 4
@pool.started = internal global i32 0, align 4
@pool.stop = internal global i32 0, align 4
@pool.start_gen = internal global i32 0, align 4
@pool.busy = internal global i32 0, align 64
@pool.gen = internal global i32 0, align 64
@pool.sleepers = internal global i32 0, align 64
@pool.claim = internal global i64 0, align 64
@pool.done = internal global i32 0, align 64
@pool.main_sleeping = internal global i32 0, align 64
@pool.fn = internal global ptr null, align 64
@pool.env = internal global ptr null, align 8
@pool.ntasks = internal global i64 0, align 8
@pool.threads = internal global [MAXT x i64] zeroinitializer, align 64
@pool.tids = internal global [MAXT x i64] zeroinitializer, align 64
@pool.counts = internal global [MAXT x [8 x i64]] zeroinitializer, align 64

declare i32 @pthread_create(ptr, ptr, ptr, ptr)
declare i32 @pthread_join(i64, ptr)
declare i64 @syscall(i64, ...)
PAUSE_DECL

define internal void @pool.pause() alwaysinline {
  PAUSE
  ret void
}

define internal void @pool.futex_wait(ptr %addr, i32 %expected) {
  %v = zext i32 %expected to i64
  %r = call i64 (i64, ...) @syscall(i64 SYS_FUTEX, ptr %addr, i64 128, i64 %v, ptr null)
  ret void
}

define internal void @pool.futex_wake(ptr %addr, i32 %n) {
  %v = zext i32 %n to i64
  %r = call i64 (i64, ...) @syscall(i64 SYS_FUTEX, ptr %addr, i64 129, i64 %v)
  ret void
}

; Claims and runs tasks of job %g until none is left unclaimed.
define internal void @pool.work(i32 %g, i64 %slot) {
entry:
  %count = getelementptr [MAXT x [8 x i64]], ptr @pool.counts, i64 0, i64 %slot, i64 0
  br label %claim
claim:
  %c = load atomic i64, ptr @pool.claim acquire, align 8
  %cgen64 = lshr i64 %c, 32
  %cgen = trunc i64 %cgen64 to i32
  %left = and i64 %c, 4294967295
  %same = icmp eq i32 %cgen, %g
  %some = icmp ne i64 %left, 0
  %ok = and i1 %same, %some
  br i1 %ok, label %try, label %out
try:
  %next = sub i64 %c, 1
  %pair = cmpxchg ptr @pool.claim, i64 %c, i64 %next acq_rel acquire, align 8
  %won = extractvalue { i64, i1 } %pair, 1
  br i1 %won, label %run, label %claim
run:
  %task = sub i64 %left, 1
  %fn = load ptr, ptr @pool.fn, align 8
  %env = load ptr, ptr @pool.env, align 8
  %ntasks = load i64, ptr @pool.ntasks, align 8
  call void %fn(i64 %task, i64 %ntasks, ptr %env)
  %n0 = load i64, ptr %count, align 8
  %n1 = add i64 %n0, 1
  store i64 %n1, ptr %count, align 8
  %d0 = atomicrmw add ptr @pool.done, i32 1 seq_cst, align 4
  %d1 = add i32 %d0, 1
  %nt32 = trunc i64 %ntasks to i32
  %last = icmp eq i32 %d1, %nt32
  br i1 %last, label %last_done, label %claim
last_done:
  %ms = load atomic i32, ptr @pool.main_sleeping seq_cst, align 4
  %asleep = icmp ne i32 %ms, 0
  br i1 %asleep, label %wake_main, label %out
wake_main:
  call void @pool.futex_wake(ptr @pool.done, i32 1)
  br label %out
out:
  ret void
}

define internal ptr @pool.worker(ptr %arg) {
entry:
  %slot = ptrtoint ptr %arg to i64
  %tid = call i64 (i64, ...) @syscall(i64 SYS_GETTID)
  %tidp = getelementptr [MAXT x i64], ptr @pool.tids, i64 0, i64 %slot
  store i64 %tid, ptr %tidp, align 8
  %g0 = load i32, ptr @pool.start_gen, align 4
  br label %wait
wait:
  %seen = phi i32 [ %g0, %entry ], [ %g, %work ], [ %seen, %slept ]
  %spin = load i32, ptr @pool.spin, align 4
  br label %spin_loop
spin_loop:
  %i = phi i32 [ 0, %wait ], [ %i1, %spin_next ]
  %g = load atomic i32, ptr @pool.gen acquire, align 4
  %changed = icmp ne i32 %g, %seen
  br i1 %changed, label %got, label %spin_next
spin_next:
  call void @pool.pause()
  %i1 = add i32 %i, 1
  %more = icmp ult i32 %i1, %spin
  br i1 %more, label %spin_loop, label %sleep
sleep:
  %s0 = atomicrmw add ptr @pool.sleepers, i32 1 seq_cst, align 4
  %gz = load atomic i32, ptr @pool.gen seq_cst, align 4
  %unchanged = icmp eq i32 %gz, %seen
  br i1 %unchanged, label %do_sleep, label %slept
do_sleep:
  call void @pool.futex_wait(ptr @pool.gen, i32 %seen)
  br label %slept
slept:
  %s1 = atomicrmw sub ptr @pool.sleepers, i32 1 seq_cst, align 4
  br label %wait
got:
  %stop = load atomic i32, ptr @pool.stop seq_cst, align 4
  %stopping = icmp ne i32 %stop, 0
  br i1 %stopping, label %exit, label %work
work:
  call void @pool.work(i32 %g, i64 %slot)
  br label %wait
exit:
  ret ptr null
}

; Starts workers 1..n-1 (slot 0 is the caller); returns how many started.
define internal i32 @pool.start(i32 %n) {
entry:
  %gnow = load atomic i32, ptr @pool.gen monotonic, align 4
  store i32 %gnow, ptr @pool.start_gen, align 4
  br label %loop
loop:
  %i = phi i32 [ 1, %entry ], [ %i1, %next ]
  %more = icmp slt i32 %i, %n
  br i1 %more, label %body, label %done
body:
  %i64 = zext i32 %i to i64
  %slotp = getelementptr [MAXT x i64], ptr @pool.threads, i64 0, i64 %i64
  %arg = inttoptr i64 %i64 to ptr
  %r = call i32 @pthread_create(ptr %slotp, ptr null, ptr @pool.worker, ptr %arg)
  %ok = icmp eq i32 %r, 0
  br i1 %ok, label %next, label %done
next:
  %i1 = add i32 %i, 1
  br label %loop
done:
  %made = phi i32 [ %i, %loop ], [ %i, %body ]
  %w = sub i32 %made, 1
  store i32 %w, ptr @pool.started, align 4
  ret i32 %w
}

define void @PARALLEL_FOR(ptr %fn, ptr %env, i64 %extent) {
entry:
  %nth = load i32, ptr @pool.nthreads, align 4
  %multi = icmp sgt i32 %nth, 1
  %big = icmp sgt i64 %extent, 1
  %want = and i1 %multi, %big
  br i1 %want, label %lock, label %serial
serial:
  call void %fn(i64 0, i64 1, ptr %env)
  ret void
lock:
  %lk = cmpxchg ptr @pool.busy, i32 0, i32 1 acquire monotonic, align 4
  %locked = extractvalue { i32, i1 } %lk, 1
  br i1 %locked, label %ensure, label %serial
ensure:
  %st0 = load i32, ptr @pool.started, align 4
  %none = icmp eq i32 %st0, 0
  br i1 %none, label %start, label %ready
start:
  %st1 = call i32 @pool.start(i32 %nth)
  br label %ready
ready:
  %workers = phi i32 [ %st0, %ensure ], [ %st1, %start ]
  %have = icmp sgt i32 %workers, 0
  br i1 %have, label %publish, label %serial_unlock
serial_unlock:
  store atomic i32 0, ptr @pool.busy release, align 4
  br label %serial
publish:
  %w1 = add i32 %workers, 1
  %split = load i32, ptr @pool.split, align 4
  %wsplit = mul i32 %w1, %split
  %w64 = zext i32 %wsplit to i64
  %fewer = icmp slt i64 %extent, %w64
  %ntasks = select i1 %fewer, i64 %extent, i64 %w64
  store ptr %fn, ptr @pool.fn, align 8
  store ptr %env, ptr @pool.env, align 8
  store i64 %ntasks, ptr @pool.ntasks, align 8
  store atomic i32 0, ptr @pool.done monotonic, align 4
  %g0 = load atomic i32, ptr @pool.gen monotonic, align 4
  %g1 = add i32 %g0, 1
  %g1w = zext i32 %g1 to i64
  %hi = shl i64 %g1w, 32
  %claimv = or i64 %hi, %ntasks
  store atomic i64 %claimv, ptr @pool.claim release, align 8
  store atomic i32 %g1, ptr @pool.gen seq_cst, align 4
  %sl = load atomic i32, ptr @pool.sleepers seq_cst, align 4
  %anyasleep = icmp ne i32 %sl, 0
  br i1 %anyasleep, label %wake, label %work
wake:
  call void @pool.futex_wake(ptr @pool.gen, i32 2147483647)
  br label %work
work:
  call void @pool.work(i32 %g1, i64 0)
  %spin = load i32, ptr @pool.spin, align 4
  br label %spin_loop
spin_loop:
  %i = phi i32 [ 0, %work ], [ %i1, %spin_next ]
  %d = load atomic i32, ptr @pool.done acquire, align 4
  %d64 = zext i32 %d to i64
  %fin = icmp eq i64 %d64, %ntasks
  br i1 %fin, label %finish, label %spin_next
spin_next:
  call void @pool.pause()
  %i1 = add i32 %i, 1
  %more = icmp ult i32 %i1, %spin
  br i1 %more, label %spin_loop, label %sleep
sleep:
  store atomic i32 1, ptr @pool.main_sleeping seq_cst, align 4
  %dz = load atomic i32, ptr @pool.done seq_cst, align 4
  %dz64 = zext i32 %dz to i64
  %finz = icmp eq i64 %dz64, %ntasks
  br i1 %finz, label %woke, label %do_sleep
do_sleep:
  call void @pool.futex_wait(ptr @pool.done, i32 %dz)
  br label %sleep
woke:
  store atomic i32 0, ptr @pool.main_sleeping seq_cst, align 4
  br label %finish
finish:
  store atomic i32 0, ptr @pool.busy release, align 4
  ret void
}

define void @SHUTDOWN() {
entry:
  br label %lock
lock:
  %lk = cmpxchg ptr @pool.busy, i32 0, i32 1 acquire monotonic, align 4
  %locked = extractvalue { i32, i1 } %lk, 1
  br i1 %locked, label %held, label %retry
retry:
  call void @pool.pause()
  br label %lock
held:
  %n = load i32, ptr @pool.started, align 4
  %any = icmp sgt i32 %n, 0
  br i1 %any, label %stop, label %unlock
stop:
  store atomic i32 1, ptr @pool.stop seq_cst, align 4
  %g0 = load atomic i32, ptr @pool.gen monotonic, align 4
  %g1 = add i32 %g0, 1
  store atomic i32 %g1, ptr @pool.gen seq_cst, align 4
  call void @pool.futex_wake(ptr @pool.gen, i32 2147483647)
  br label %join
join:
  %i = phi i32 [ 1, %stop ], [ %i1, %join ]
  %i64 = zext i32 %i to i64
  %tp = getelementptr [MAXT x i64], ptr @pool.threads, i64 0, i64 %i64
  %t = load i64, ptr %tp, align 8
  %r = call i32 @pthread_join(i64 %t, ptr null)
  %i1 = add i32 %i, 1
  %more = icmp sle i32 %i1, %n
  br i1 %more, label %join, label %joined
joined:
  store atomic i32 0, ptr @pool.stop seq_cst, align 4
  store i32 0, ptr @pool.started, align 4
  br label %unlock
unlock:
  store atomic i32 0, ptr @pool.busy release, align 4
  ret void
}

; After fork() the child has none of the parent's workers: forget them without joining.
define void @FORGET() {
entry:
  store i32 0, ptr @pool.started, align 4
  store i32 0, ptr @pool.sleepers, align 4
  store i32 0, ptr @pool.main_sleeping, align 4
  store i32 0, ptr @pool.busy, align 4
  ret void
}

define void @CONFIGURE(i32 %n, i32 %spin, i32 %split) {
entry:
  call void @SHUTDOWN()
  %lowsplit = icmp slt i32 %split, 1
  %split1 = select i1 %lowsplit, i32 1, i32 %split
  store i32 %split1, ptr @pool.split, align 4
  %low = icmp slt i32 %n, 1
  %n1 = select i1 %low, i32 1, i32 %n
  %high = icmp sgt i32 %n1, MAXT
  %n2 = select i1 %high, i32 MAXT, i32 %n1
  store i32 %n2, ptr @pool.nthreads, align 4
  store i32 %spin, ptr @pool.spin, align 4
  ret void
}

define i64 @STAT(i32 %what, i32 %slot) {
entry:
  %s = zext i32 %slot to i64
  switch i32 %what, label %workers [ i32 1, label %tid
                                     i32 2, label %count ]
workers:
  %n = load i32, ptr @pool.started, align 4
  %n64 = zext i32 %n to i64
  ret i64 %n64
tid:
  %tp = getelementptr [MAXT x i64], ptr @pool.tids, i64 0, i64 %s
  %t = load i64, ptr %tp, align 8
  ret i64 %t
count:
  %cp = getelementptr [MAXT x [8 x i64]], ptr @pool.counts, i64 0, i64 %s, i64 0
  %c = load i64, ptr %cp, align 8
  ret i64 %c
}
"""


def pool_ir(triple: str, spin: int = DEFAULT_SPIN) -> str:
    """The pool's IR for `triple` (a module body without a header; the caller sets triple/layout)."""
    arch = arch_of(triple)
    substitutions = {
        "PAUSE_DECL": _PAUSE_DECLS[triple.split("-", 1)[0]],
        "PAUSE": arch.pause,
        "SYS_FUTEX": str(arch.sys_futex),
        "SYS_GETTID": str(arch.sys_gettid),
        "MAXT": str(MAX_THREADS),
        "SPIN": str(spin),
        "PARALLEL_FOR": PARALLEL_FOR,
        "CONFIGURE": CONFIGURE,
        "SHUTDOWN": SHUTDOWN,
        "STAT": STAT,
        "FORGET": FORGET,
    }
    text = _POOL_IR
    for key, value in substitutions.items():
        text = text.replace(key, value)
    return text
