// Dynamic batcher: many concurrent callers, one model. Plain C++17, no Python.
//
// Callers submit requests (a few tokenized posts each) and are told about the result through
// a completion callback; one scheduler thread forms batches and calls the model.
//
// Batch formation (per batch, under the batcher mutex, O(window x max_batch_size) work):
//   * the oldest `window` queued posts are sorted by length and cut into the groups that
//     minimise the modelled cost sum(batch_overhead_tokens + rows x longest) (an exact DP;
//     padded tokens are what the model computes, the overhead is each call's fixed cost);
//   * the group holding the oldest queued post runs next: a post at queue position k is
//     computed within k batches, whatever better-fitting posts arrive behind it (fairness);
//   * a batch holds at most max_batch_size rows and rows x longest <= max_batch_tokens.
// A batch is formed when the oldest post has waited max_wait_us, or a full batch is waiting,
// or the batcher is draining.
//
// Threading: the mutex guards the queue and the counters only; the model call, packing and
// result scatter run outside it, and callbacks are called without it (so a callback that takes
// another lock, e.g. the Python GIL, cannot deadlock against submit()).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace postemb {

using BatcherClock = std::chrono::steady_clock;

// submit() past the queued-token bound. Callers should retry later (HTTP 503/429).
struct OverloadedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// submit() after close().
struct BatcherClosedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct BatcherOptions {
  int64_t max_batch_tokens = 4096;    // padded tokens per batch: rows x longest row
  int64_t max_batch_size = 64;        // rows per batch
  int64_t max_wait_us = 500;          // how long the oldest queued post waits for company
  int64_t max_queued_tokens = 65536;  // backpressure: real tokens queued (not yet in a batch)
  int64_t batch_overhead_tokens = 64;  // a model call's fixed cost, in padded tokens (grouping)
  int64_t window = 1024;              // how many of the oldest queued posts are grouping candidates
  int64_t pad_id = 0;                 // token id written into padding slots
};

// Fixed-bucket histogram (Prometheus shape): counts[i] = observations <= bounds[i] and
// > bounds[i-1]; counts.back() = above the last bound.
struct Histogram {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;
  double sum = 0.0;
  uint64_t count = 0;
  explicit Histogram(std::vector<double> b = {});
  void observe(double v);
};

struct BatcherStats {
  // Right now.
  int64_t pending_requests = 0;  // submitted, not finished (queued or being computed)
  int64_t queued_posts = 0;
  int64_t queued_tokens = 0;
  int64_t in_flight_posts = 0;
  // Since start (monotonic counters).
  uint64_t requests_submitted = 0;
  uint64_t requests_ok = 0;
  uint64_t requests_failed = 0;     // backend raised on their batch
  uint64_t requests_expired = 0;    // deadline passed before they were computed
  uint64_t requests_rejected = 0;   // OverloadedError at submit
  uint64_t requests_cancelled = 0;  // cancelled by the caller before being computed
  uint64_t requests_closed = 0;     // dropped by close(drain=false)
  uint64_t batches = 0;
  uint64_t batches_failed = 0;
  uint64_t posts_computed = 0;
  uint64_t tokens_computed = 0;         // real tokens in computed batches
  uint64_t padded_tokens_computed = 0;  // rows x width summed over computed batches
  Histogram batch_size;            // rows per batch
  Histogram batch_padding_ratio;   // 1 - real/padded per batch
  Histogram queue_seconds;         // per post: submit -> its batch starts
  Histogram inference_seconds;     // per batch: the model call
  BatcherStats();
};

enum class RequestStatus : int { kOk = 0, kBackendError = 1, kDeadlineExceeded = 2, kClosed = 3 };

// One finished request, handed to the completion callback.
struct Completion {
  uint64_t ticket = 0;
  RequestStatus status = RequestStatus::kOk;
  std::string message;        // why it failed (the backend's message for kBackendError)
  int64_t rows = 0;           // posts in the request
  int64_t dim = 0;            // columns of values
  std::vector<float> values;  // rows x dim, row-major, in the request's post order (kOk only)
  double queue_seconds = 0;   // submit -> the last of its batches started
  double inference_seconds = 0;  // sum of the model calls its posts were in
};

// A packed batch handed to the model: rows x width int64, row-major.
struct BatchView {
  const int64_t* input_ids;
  const int64_t* attention_mask;
  int64_t rows;
  int64_t width;
};

// Runs the model on a batch: resizes `out` to rows x dim floats, fills it, sets `dim`.
// Throws std::exception to fail exactly this batch's requests with what().
using RunBatchFn = std::function<void(const BatchView&, std::vector<float>& out, int64_t& dim)>;
// Receives finished requests; called on the scheduler thread without the batcher mutex.
// Must not throw (an exception is swallowed; the requests still count as finished).
using CompletionFn = std::function<void(std::vector<Completion>& done)>;

class DynamicBatcher {
 public:
  // Validates options (std::invalid_argument naming the option and value) and starts the
  // scheduler thread.
  DynamicBatcher(BatcherOptions options, RunBatchFn run, CompletionFn on_done);
  // close(false) and join, unless called on the scheduler thread itself (then only stops it).
  ~DynamicBatcher();
  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // Queues a request of posts (token-id rows, each 1..max_batch_tokens long) under the caller's
  // ticket; its completion carries the same ticket. `timeout_us` > 0: a deadline; a request not
  // yet computed by then fails with kDeadlineExceeded and is not computed. Never blocks on the
  // model. Throws OverloadedError when queued tokens would pass max_queued_tokens,
  // BatcherClosedError after close(), std::invalid_argument for bad posts.
  void submit(uint64_t ticket, std::vector<std::vector<int64_t>> posts, int64_t timeout_us = 0);

  // The request gets no completion; its posts not yet in a batch are dropped (a batch already
  // running finishes, its rows for this request are discarded). False if the ticket is unknown
  // or the request has already finished.
  bool cancel(uint64_t ticket);

  // drain=true: compute everything queued, then stop; drain=false: fail queued requests with
  // kClosed (the batch in flight still completes). Either way submit() throws afterwards.
  // Blocks until the scheduler thread has exited (no thread is left). Idempotent. On the
  // scheduler thread itself (from a callback) it only asks the thread to stop.
  void close(bool drain = true);

  bool closed() const;
  // True when called from the scheduler thread (i.e. from inside a callback).
  bool on_scheduler_thread() const { return std::this_thread::get_id() == thread_id_; }
  BatcherStats stats() const;
  const BatcherOptions& options() const { return opt_; }

 private:
  struct Request;
  struct Post {
    std::shared_ptr<Request> req;
    int64_t row;
    int64_t len;
    uint64_t seq;
    BatcherClock::time_point enqueued;
  };
  struct Batch {
    std::vector<Post> posts;
    int64_t width = 0;
  };

  void loop();
  // Under mu_: drops posts of finished/expired/cancelled requests; expired ones go to `done`.
  // Returns the earliest deadline among the requests left queued (time_point::max() if none).
  BatcherClock::time_point purge_locked(BatcherClock::time_point now, std::vector<Completion>& done);
  void fail_all_locked(RequestStatus status, const std::string& message, std::vector<Completion>& done);
  Batch form_locked();
  void run_batch(Batch& batch, std::vector<Completion>& done);
  void deliver(std::vector<Completion>& done);
  bool due_locked(BatcherClock::time_point now) const;

  const BatcherOptions opt_;
  RunBatchFn run_;
  CompletionFn on_done_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Post> queue_;  // arrival order
  std::unordered_map<uint64_t, std::shared_ptr<Request>> live_;  // submitted, not finished
  uint64_t next_seq_ = 0;
  bool closing_ = false;
  bool drain_ = true;
  BatcherStats stats_;

  std::mutex join_mu_;  // serialises close() callers around join()
  std::thread thread_;
  std::thread::id thread_id_;
};

}  // namespace postemb
