// C++-only test of the dynamic batcher's scheduler (no Python). Built and run under
// ThreadSanitizer by tests/test_batcher_tsan.py:
//   g++ -std=c++17 -O1 -g -fsanitize=thread -Icsrc csrc/batcher.cpp csrc/pack.cpp \
//       csrc/tests/test_batcher.cpp -o test_batcher -pthread && ./test_batcher
// Exit status 0 and "ALL OK" on success; the first failed check prints and exits 1.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "batcher.h"

using namespace postemb;

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                   \
      std::fprintf(stderr, "\n");                                          \
      std::exit(1);                                                        \
    }                                                                      \
  } while (0)

namespace {

constexpr int64_t kDim = 3;
constexpr int64_t kFailToken = 999;  // a batch holding this token id makes the model throw

// The fake model: row -> (sum of real ids, real length, first id). Padding must not change it.
void fake_model(const BatchView& b, std::vector<float>& out, int64_t& dim, int sleep_us = 0) {
  if (sleep_us) std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
  dim = kDim;
  out.assign(static_cast<size_t>(b.rows * kDim), 0.0f);
  for (int64_t i = 0; i < b.rows; ++i) {
    double sum = 0, len = 0;
    for (int64_t j = 0; j < b.width; ++j) {
      const int64_t id = b.input_ids[i * b.width + j];
      if (b.attention_mask[i * b.width + j]) {
        if (id == kFailToken) throw std::runtime_error("fake model failure on token 999");
        sum += static_cast<double>(id);
        len += 1;
      } else {
        CHECK(id == 0, "padding slot holds %lld, expected pad_id 0", static_cast<long long>(id));
      }
    }
    out[i * kDim + 0] = static_cast<float>(sum);
    out[i * kDim + 1] = static_cast<float>(len);
    out[i * kDim + 2] = static_cast<float>(b.input_ids[i * b.width]);
  }
}

// Collects completions and lets the test wait for a number of them.
struct Sink {
  std::mutex mu;
  std::condition_variable cv;
  std::map<uint64_t, Completion> got;
  size_t duplicates = 0;
  void operator()(std::vector<Completion>& done) {
    std::lock_guard<std::mutex> lk(mu);
    for (auto& c : done) {
      if (got.count(c.ticket)) ++duplicates;
      got[c.ticket] = std::move(c);
    }
    cv.notify_all();
  }
  bool wait_for(size_t n, int timeout_ms = 20000) {
    std::unique_lock<std::mutex> lk(mu);
    return cv.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] { return got.size() >= n; });
  }
};

std::vector<int64_t> make_post(std::mt19937& rng, uint64_t ticket, int64_t row, int64_t len) {
  std::vector<int64_t> p(static_cast<size_t>(len));
  p[0] = static_cast<int64_t>(ticket % 500) + 1;  // first id identifies the request
  for (int64_t j = 1; j < len; ++j) p[j] = static_cast<int64_t>(rng() % 300) + 1 + row;
  return p;
}

void check_values(const Completion& c, const std::vector<std::vector<int64_t>>& posts) {
  CHECK(c.status == RequestStatus::kOk, "ticket %llu status %d: %s", static_cast<unsigned long long>(c.ticket),
        static_cast<int>(c.status), c.message.c_str());
  CHECK(c.rows == static_cast<int64_t>(posts.size()) && c.dim == kDim, "shape");
  for (size_t r = 0; r < posts.size(); ++r) {
    double sum = 0;
    for (auto id : posts[r]) sum += static_cast<double>(id);
    CHECK(c.values[r * kDim + 0] == static_cast<float>(sum), "ticket %llu row %zu: wrong sum",
          static_cast<unsigned long long>(c.ticket), r);
    CHECK(c.values[r * kDim + 1] == static_cast<float>(posts[r].size()), "row length");
    CHECK(c.values[r * kDim + 2] == static_cast<float>(posts[r][0]), "row first id");
  }
}

void test_stress() {
  Sink sink;
  BatcherOptions opt;
  opt.max_batch_tokens = 512;
  opt.max_batch_size = 16;
  opt.max_wait_us = 200;
  opt.max_queued_tokens = 1 << 20;
  DynamicBatcher b(opt, [](const BatchView& v, std::vector<float>& o, int64_t& d) { fake_model(v, o, d); },
                   std::ref(sink));
  constexpr int kThreads = 8, kPerThread = 150;
  std::vector<std::map<uint64_t, std::vector<std::vector<int64_t>>>> sent(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t));
      for (int i = 0; i < kPerThread; ++i) {
        const uint64_t ticket = static_cast<uint64_t>(t) * 100000 + static_cast<uint64_t>(i);
        std::vector<std::vector<int64_t>> posts;
        const int n = 1 + static_cast<int>(rng() % 8);
        for (int r = 0; r < n; ++r) posts.push_back(make_post(rng, ticket, r, 1 + static_cast<int64_t>(rng() % 60)));
        sent[t][ticket] = posts;
        b.submit(ticket, posts);
        if (i % 16 == 0) (void)b.stats();  // concurrent readers of the counters
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(sink.wait_for(kThreads * kPerThread), "only %zu of %d completions", sink.got.size(), kThreads * kPerThread);
  b.close(true);
  CHECK(sink.duplicates == 0, "%zu duplicate completions", sink.duplicates);
  CHECK(sink.got.size() == static_cast<size_t>(kThreads * kPerThread), "extra completions");
  for (auto& per : sent)
    for (auto& [ticket, posts] : per) check_values(sink.got.at(ticket), posts);
  const BatcherStats s = b.stats();
  CHECK(s.queued_posts == 0 && s.queued_tokens == 0 && s.pending_requests == 0, "queue not empty at the end");
  CHECK(s.requests_ok == static_cast<uint64_t>(kThreads * kPerThread), "requests_ok %llu",
        static_cast<unsigned long long>(s.requests_ok));
  CHECK(s.padded_tokens_computed >= s.tokens_computed, "padded < real");
  std::printf("stress: %llu batches, padding ratio %.3f\n", static_cast<unsigned long long>(s.batches),
              1.0 - static_cast<double>(s.tokens_computed) / static_cast<double>(s.padded_tokens_computed));
}

void test_backend_errors_fail_only_their_batch() {
  Sink sink;
  BatcherOptions opt;
  opt.max_batch_size = 1;  // one request per batch: exactly the poisoned ones fail
  DynamicBatcher b(opt, [](const BatchView& v, std::vector<float>& o, int64_t& d) { fake_model(v, o, d); },
                   std::ref(sink));
  for (uint64_t t = 0; t < 40; ++t) {
    std::vector<int64_t> p = {static_cast<int64_t>(t) + 1, 5, 6};
    if (t % 4 == 0) p[1] = kFailToken;
    b.submit(t, {p});
  }
  CHECK(sink.wait_for(40), "completions missing");
  b.close(true);
  for (uint64_t t = 0; t < 40; ++t) {
    const Completion& c = sink.got.at(t);
    if (t % 4 == 0) {
      CHECK(c.status == RequestStatus::kBackendError, "ticket %llu should fail", static_cast<unsigned long long>(t));
      CHECK(c.message == "fake model failure on token 999", "message: %s", c.message.c_str());
    } else {
      CHECK(c.status == RequestStatus::kOk, "ticket %llu should succeed: %s", static_cast<unsigned long long>(t),
            c.message.c_str());
    }
  }
  CHECK(b.stats().batches_failed == 10, "batches_failed");
}

void test_overload_deadline_cancel() {
  Sink sink;
  BatcherOptions opt;
  opt.max_queued_tokens = 100;
  opt.max_batch_size = 1;
  std::atomic<int> seen_expired{0};
  DynamicBatcher b(
      opt,
      [&](const BatchView& v, std::vector<float>& o, int64_t& d) {
        if (v.input_ids[0] == 77) ++seen_expired;  // the expired request must never be computed
        fake_model(v, o, d, 30000);
      },
      std::ref(sink));
  b.submit(1, {std::vector<int64_t>(10, 1)});  // runs for 30 ms
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  b.submit(2, {std::vector<int64_t>(10, 77)}, /*timeout_us=*/1000);  // expires while 1 runs
  b.submit(3, {std::vector<int64_t>(10, 3)});
  CHECK(b.cancel(3), "cancel of a queued request");
  CHECK(!b.cancel(3), "second cancel");
  bool overloaded = false;
  try {
    b.submit(4, {std::vector<int64_t>(50, 4), std::vector<int64_t>(50, 4)});
  } catch (const OverloadedError&) {
    overloaded = true;
  }
  CHECK(overloaded, "no OverloadedError past max_queued_tokens");
  bool invalid = false;
  try {
    b.submit(5, {std::vector<int64_t>(101, 4)});
  } catch (const std::invalid_argument&) {
    invalid = true;
  }
  CHECK(invalid, "a request larger than the queue bound must be invalid_argument");
  CHECK(sink.wait_for(2), "completions missing");
  b.close(true);
  CHECK(sink.got.at(1).status == RequestStatus::kOk, "1 ok");
  CHECK(sink.got.at(2).status == RequestStatus::kDeadlineExceeded, "2 expired");
  CHECK(sink.got.count(3) == 0, "a cancelled request gets no completion");
  CHECK(seen_expired == 0, "the expired request was computed");
  const BatcherStats s = b.stats();
  CHECK(s.requests_rejected == 1 && s.requests_expired == 1 && s.requests_cancelled == 1, "counters");
}

// A deadline shorter than max_wait_us: the caller hears of it when it passes, not when the batch
// would have been due (10 minutes here; the wait below is 60 s, so only a missed wake fails it).
void test_a_deadline_is_honoured_while_the_queue_waits_for_company() {
  Sink sink;
  BatcherOptions opt;
  opt.max_wait_us = 600LL * 1000 * 1000;
  DynamicBatcher b(
      opt, [](const BatchView& v, std::vector<float>& o, int64_t& d) { fake_model(v, o, d); }, std::ref(sink));
  b.submit(1, {std::vector<int64_t>(3, 1)}, /*timeout_us=*/10000);
  CHECK(sink.wait_for(1, 60000), "the expired request was not reported until its batch was due");
  CHECK(sink.got.at(1).status == RequestStatus::kDeadlineExceeded, "1 expired");
  b.close(false);
}

void test_a_negative_pad_id_is_refused() {
  BatcherOptions opt;
  opt.pad_id = -1;
  std::string what;
  try {
    DynamicBatcher b(
        opt, [](const BatchView& v, std::vector<float>& o, int64_t& d) { fake_model(v, o, d); },
        [](std::vector<Completion>&) {});
  } catch (const std::invalid_argument& e) {
    what = e.what();
  }
  CHECK(what == "`pad_id` must be >= 0 (a token id). Given: -1.", "pad_id -1: %s", what.c_str());
}

void test_close_while_busy() {
  for (bool drain : {true, false}) {
    Sink sink;
    BatcherOptions opt;
    opt.max_batch_size = 2;
    opt.max_queued_tokens = 1 << 20;
    auto* b = new DynamicBatcher(
        opt, [](const BatchView& v, std::vector<float>& o, int64_t& d) { fake_model(v, o, d, 2000); }, std::ref(sink));
    std::atomic<bool> stop{false};
    std::atomic<int> accepted{0}, refused{0};
    std::vector<std::thread> producers;
    for (int t = 0; t < 4; ++t) {
      producers.emplace_back([&, t] {
        for (uint64_t i = 0; !stop; ++i) {
          try {
            b->submit(static_cast<uint64_t>(t) << 32 | i, {{1, 2, 3}});
            ++accepted;
          } catch (const BatcherClosedError&) {
            ++refused;
            break;
          }
          std::this_thread::sleep_for(std::chrono::microseconds(300));
        }
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    b->close(drain);  // returns only when the scheduler thread has exited
    stop = true;
    for (auto& th : producers) th.join();
    CHECK(refused == 4 || accepted > 0, "producers saw the close");
    // Every accepted request got exactly one completion: ok when draining; ok or closed otherwise.
    CHECK(sink.got.size() == static_cast<size_t>(accepted.load()), "drain=%d: %zu completions for %d requests",
          static_cast<int>(drain), sink.got.size(), accepted.load());
    size_t closed = 0;
    for (auto& [t, c] : sink.got) {
      if (drain) CHECK(c.status == RequestStatus::kOk, "drain: status %d", static_cast<int>(c.status));
      closed += c.status == RequestStatus::kClosed;
    }
    if (!drain) CHECK(closed > 0, "close(false) while busy should drop queued requests");
    bool threw = false;
    try {
      b->submit(1ull << 60, {{1}});
    } catch (const BatcherClosedError&) {
      threw = true;
    }
    CHECK(threw, "submit after close");
    b->close(true);  // idempotent
    delete b;
  }
}

void test_grouping_and_fairness() {
  // Lengths alternate short/long; all queued before the first batch is due, so batches group
  // by length while the oldest post always leads.
  Sink sink;
  std::mutex wm;
  std::vector<std::pair<int64_t, int64_t>> batches;  // (rows, width)
  BatcherOptions opt;
  opt.max_wait_us = 200000;  // nothing is due until we say so (by filling a batch or closing)
  opt.max_batch_size = 8;
  opt.batch_overhead_tokens = 16;
  DynamicBatcher b(
      opt,
      [&](const BatchView& v, std::vector<float>& o, int64_t& d) {
        {
          std::lock_guard<std::mutex> lk(wm);
          batches.emplace_back(v.rows, v.width);
        }
        fake_model(v, o, d);
      },
      std::ref(sink));
  for (uint64_t t = 0; t < 8; ++t) b.submit(t, {std::vector<int64_t>(t % 2 ? 40 : 8, 5)});  // 8 posts: due
  CHECK(sink.wait_for(8), "completions");
  b.close(true);
  const BatcherStats s = b.stats();
  // Two batches of 4: widths 8 and 40, no padding at all (one batch of 8 x 40 would pad 40%).
  CHECK(batches.size() == 2, "%zu batches", batches.size());
  CHECK(batches[0] == std::make_pair(int64_t{4}, int64_t{8}), "first batch (oldest is short)");
  CHECK(batches[1] == std::make_pair(int64_t{4}, int64_t{40}), "second batch");
  CHECK(s.padded_tokens_computed == s.tokens_computed, "no padding expected");

  // Fairness: one long post, then a stream of short ones that fit better together; the long
  // one is in the very first batch because it is the oldest.
  Sink sink2;
  std::vector<int64_t> first_widths;
  BatcherOptions opt2;
  opt2.max_wait_us = 100;
  opt2.max_batch_size = 4;
  opt2.batch_overhead_tokens = 0;
  DynamicBatcher b2(
      opt2,
      [&](const BatchView& v, std::vector<float>& o, int64_t& d) {
        {
          std::lock_guard<std::mutex> lk(wm);
          first_widths.push_back(v.width);
        }
        fake_model(v, o, d, 1000);
      },
      std::ref(sink2));
  b2.submit(0, {std::vector<int64_t>(5, 1)});   // short: keeps the model busy 1 ms
  b2.submit(1, {std::vector<int64_t>(50, 1)});  // long, oldest once 0 runs
  for (uint64_t t = 2; t < 40; ++t) b2.submit(t, {std::vector<int64_t>(5, 1)});
  CHECK(sink2.wait_for(40), "completions");
  b2.close(true);
  bool long_done_early = false;
  for (size_t i = 0; i < first_widths.size() && i < 3; ++i) long_done_early |= first_widths[i] == 50;
  CHECK(long_done_early, "the long post waited behind the stream of short ones");
}

}  // namespace

int main() {
  test_stress();
  test_backend_errors_fail_only_their_batch();
  test_overload_deadline_cancel();
  test_a_deadline_is_honoured_while_the_queue_waits_for_company();
  test_a_negative_pad_id_is_refused();
  test_close_while_busy();
  test_grouping_and_fairness();
  std::printf("ALL OK\n");
  return 0;
}
