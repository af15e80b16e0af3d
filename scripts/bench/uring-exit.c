// What it costs to end a thread that has used an io_uring, the fact behind Machine's parked I/O
// thread and EventLoop::release_thread (vmm/machine.cpp, vmm/base/event_loop.cpp). A thread arms
// multishot polls on two eventfds (as the event loop's watches are), runs until told to stop, and
// then, by mode:
//   exit     returns with its polls armed: the kernel cancels them itself as the thread exits and,
//            by the timing (tens of microseconds or about one tick), completes them a tick later;
//   release  cancels its polls and reaps the cancellations first, then returns (the next thread
//            arms them again);
//   park     does not end: it waits on a condition variable until woken (what a pause does now).
// Prints the median and 10th/90th percentiles of stop -> joined (or -> parked) over ROUNDS.
//
// usage: cc -O2 -o /tmp/uring-exit scripts/bench/uring-exit.c -luring -lpthread && /tmp/uring-exit [ROUNDS]
#define _GNU_SOURCE
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

static struct io_uring ring;
static int stop_fd, other_fd;
enum { kExit, kRelease, kPark };
static int mode;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int parked, want_park, quit;

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void arm(int fd, uint64_t tag) {
  struct io_uring_sqe* s = io_uring_get_sqe(&ring);
  io_uring_prep_poll_multishot(s, fd, POLLIN);
  io_uring_sqe_set_data64(s, tag);
}

// Runs until the stop eventfd fires; re-arms a poll the kernel ended.
static void run_loop(void) {
  for (;;) {
    struct io_uring_cqe* c;
    io_uring_submit_and_wait(&ring, 1);
    unsigned head, n = 0;
    int stop = 0;
    io_uring_for_each_cqe(&ring, head, c) {
      ++n;
      const uint64_t tag = io_uring_cqe_get_data64(c);
      if (tag == 1 && c->res >= 0) {
        uint64_t v;
        (void)!read(stop_fd, &v, sizeof v);
        stop = 1;
      }
      if (!(c->flags & IORING_CQE_F_MORE) && (tag == 1 || tag == 2)) arm(tag == 1 ? stop_fd : other_fd, tag);
    }
    io_uring_cq_advance(&ring, n);
    if (stop) return;
  }
}

static void release(void) {
  struct io_uring_sqe* s = io_uring_get_sqe(&ring);
  io_uring_prep_cancel64(s, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data64(s, 9);
  io_uring_submit(&ring);
  int finals = 0, cancel_done = 0;
  while (finals < 2 || !cancel_done) {
    struct io_uring_cqe* c;
    if (io_uring_wait_cqe(&ring, &c) != 0) break;
    const uint64_t tag = io_uring_cqe_get_data64(c);
    if (tag == 9) cancel_done = 1;
    else if (!(c->flags & IORING_CQE_F_MORE)) ++finals;
    io_uring_cqe_seen(&ring, c);
  }
  arm(stop_fd, 1);  // queued, submitted by the next thread
  arm(other_fd, 2);
}

static void* thread_main(void* arg) {
  (void)arg;
  for (;;) {
    run_loop();
    if (mode == kRelease) release();
    if (mode != kPark) return NULL;
    pthread_mutex_lock(&mu);
    parked = 1;
    pthread_cond_broadcast(&cv);
    while (want_park && !quit) pthread_cond_wait(&cv, &mu);
    parked = 0;
    const int q = quit;
    pthread_mutex_unlock(&mu);
    if (q) return NULL;
  }
}

static int cmp(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? atoi(argv[1]) : 100;
  if (rounds < 10) return fprintf(stderr, "usage: %s [ROUNDS >= 10]\n", argv[0]), 2;
  double* t = calloc((size_t)rounds, sizeof *t);
  const char* names[] = {"exit (polls armed)", "release first, then exit", "park and wake"};
  for (mode = kExit; mode <= kPark; ++mode) {
    if (io_uring_queue_init(64, &ring, 0) != 0) return fprintf(stderr, "io_uring_queue_init failed\n"), 1;
    stop_fd = eventfd(0, EFD_NONBLOCK);
    other_fd = eventfd(0, EFD_NONBLOCK);
    arm(stop_fd, 1);
    arm(other_fd, 2);
    pthread_t th;
    if (mode == kPark) pthread_create(&th, NULL, thread_main, NULL);
    for (int i = 0; i < rounds; ++i) {
      if (mode != kPark) pthread_create(&th, NULL, thread_main, NULL);
      usleep(2000);  // the thread is in the loop, its polls armed
      const uint64_t one = 1;
      pthread_mutex_lock(&mu);
      want_park = 1;
      pthread_mutex_unlock(&mu);
      const double t0 = now_us();
      (void)!write(stop_fd, &one, sizeof one);
      if (mode == kPark) {
        pthread_mutex_lock(&mu);
        while (!parked) pthread_cond_wait(&cv, &mu);
        t[i] = now_us() - t0;
        want_park = 0;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
      } else {
        pthread_join(th, NULL);
        t[i] = now_us() - t0;
      }
    }
    if (mode == kPark) {
      pthread_mutex_lock(&mu);
      quit = 1;
      pthread_cond_broadcast(&cv);
      pthread_mutex_unlock(&mu);
      const uint64_t one = 1;
      (void)!write(stop_fd, &one, sizeof one);
      pthread_join(th, NULL);
    }
    qsort(t, (size_t)rounds, sizeof *t, cmp);
    printf("%-26s stop -> %s: median %8.1f us  p10 %8.1f  p90 %8.1f\n", names[mode], mode == kPark ? "parked" : "joined",
           t[rounds / 2], t[rounds / 10], t[rounds * 9 / 10]);
    io_uring_queue_exit(&ring);
    close(stop_fd);
    close(other_fd);
  }
  free(t);
  return 0;
}
