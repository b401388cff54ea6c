#include "batcher.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "pack.h"

namespace postemb {

namespace {

double seconds_between(BatcherClock::time_point a, BatcherClock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::vector<double> latency_bounds() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0};
}

// Where the queue bound is set, and the path that has none (submit is for a few posts per call).
const std::string kQueueFix =
    "submit fewer posts per request (for bulk work, Encoder.encode() has no queue), or raise the limit where "
    "the batcher is started: Encoder.start_batcher(max_queued_tokens=...) or DynamicBatcher(max_queued_tokens=...).";

void check_positive(const char* name, int64_t v) {
  if (v < 1) throw std::invalid_argument(std::string("`") + name + "` must be >= 1. Given: " + std::to_string(v) + ".");
}

}  // namespace

Histogram::Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}

void Histogram::observe(double v) {
  const size_t i = static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin());
  ++counts[i];
  sum += v;
  ++count;
}

BatcherStats::BatcherStats()
    : batch_size({1, 2, 4, 8, 16, 32, 64, 128, 256}),
      batch_padding_ratio({0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75}),
      queue_seconds(latency_bounds()),
      inference_seconds(latency_bounds()) {}

// A submitted request. Fields below `// scheduler` are touched only by the scheduler thread;
// the others are guarded by mu_.
struct DynamicBatcher::Request {
  uint64_t ticket = 0;
  int64_t rows = 0;
  std::vector<std::vector<int64_t>> posts;  // token ids; a post's row is moved out when batched
  BatcherClock::time_point enqueued;
  BatcherClock::time_point deadline = BatcherClock::time_point::max();
  bool finished = false;   // completion decided (or cancelled): remaining posts are dropped
  bool cancelled = false;
  // scheduler
  int64_t remaining = 0;   // rows not yet computed
  int64_t dim = 0;
  std::vector<float> values;
  double queue_seconds = 0;
  double inference_seconds = 0;
};

DynamicBatcher::DynamicBatcher(BatcherOptions options, RunBatchFn run, CompletionFn on_done)
    : opt_(options), run_(std::move(run)), on_done_(std::move(on_done)) {
  check_positive("max_batch_tokens", opt_.max_batch_tokens);
  check_positive("max_batch_size", opt_.max_batch_size);
  check_positive("max_queued_tokens", opt_.max_queued_tokens);
  check_positive("window", opt_.window);
  if (opt_.max_wait_us < 0)
    throw std::invalid_argument("`max_wait_us` must be >= 0. Given: " + std::to_string(opt_.max_wait_us) + ".");
  if (opt_.batch_overhead_tokens < 0)
    throw std::invalid_argument("`batch_overhead_tokens` must be >= 0. Given: " +
                                std::to_string(opt_.batch_overhead_tokens) + ".");
  if (opt_.pad_id < 0)
    throw std::invalid_argument("`pad_id` must be >= 0 (a token id). Given: " + std::to_string(opt_.pad_id) + ".");
  if (!run_ || !on_done_) throw std::invalid_argument("`run` and `on_done` must be callable.");
  thread_ = std::thread([this] { loop(); });
  thread_id_ = thread_.get_id();
}

DynamicBatcher::~DynamicBatcher() {
  close(false);
  // On the scheduler thread (a callback dropped the last owner) close() cannot join; detach so
  // the std::thread destructor does not terminate. The owner must not let that happen while the
  // thread still runs user code; the Python face keeps batchers alive until closed.
  if (thread_.joinable()) thread_.detach();
}

void DynamicBatcher::submit(uint64_t ticket, std::vector<std::vector<int64_t>> posts, int64_t timeout_us) {
  if (posts.empty()) throw std::invalid_argument("`posts` must hold at least one post. Given: 0 posts.");
  int64_t tokens = 0;
  for (size_t i = 0; i < posts.size(); ++i) {
    const auto n = static_cast<int64_t>(posts[i].size());
    if (n < 1 || n > opt_.max_batch_tokens)
      throw std::invalid_argument("`posts[" + std::to_string(i) + "]` must hold 1 to max_batch_tokens (" +
                                  std::to_string(opt_.max_batch_tokens) + ") token ids. Given: " +
                                  std::to_string(n) + ".");
    tokens += n;
  }
  if (tokens > opt_.max_queued_tokens)
    throw std::invalid_argument("`posts` hold " + std::to_string(tokens) + " tokens, more than max_queued_tokens (" +
                                std::to_string(opt_.max_queued_tokens) +
                                "), so they can never be queued. Fix: " + kQueueFix);
  auto req = std::make_shared<Request>();
  req->ticket = ticket;
  req->rows = static_cast<int64_t>(posts.size());
  req->remaining = req->rows;
  req->enqueued = BatcherClock::now();
  if (timeout_us > 0) req->deadline = req->enqueued + std::chrono::microseconds(timeout_us);
  std::vector<int64_t> lens(posts.size());
  for (size_t i = 0; i < posts.size(); ++i) lens[i] = static_cast<int64_t>(posts[i].size());
  req->posts = std::move(posts);
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (closing_) throw BatcherClosedError("the batcher is closed; submit() is no longer accepted.");
    if (stats_.queued_tokens + tokens > opt_.max_queued_tokens) {
      ++stats_.requests_rejected;
      throw OverloadedError("the batcher queue is full: " + std::to_string(stats_.queued_tokens) +
                            " tokens queued, this request adds " + std::to_string(tokens) +
                            ", max_queued_tokens is " + std::to_string(opt_.max_queued_tokens) + ". Retry later.");
    }
    if (!live_.emplace(ticket, req).second)
      throw std::invalid_argument("`ticket` " + std::to_string(ticket) + " is already pending.");
    for (int64_t r = 0; r < req->rows; ++r) queue_.push_back(Post{req, r, lens[r], next_seq_++, req->enqueued});
    stats_.queued_posts += req->rows;
    stats_.queued_tokens += tokens;
    ++stats_.requests_submitted;
  }
  cv_.notify_one();
}

bool DynamicBatcher::cancel(uint64_t ticket) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = live_.find(ticket);
  if (it == live_.end() || it->second->finished) return false;
  it->second->cancelled = true;
  it->second->finished = true;
  live_.erase(it);
  ++stats_.requests_cancelled;
  // Its queued posts are dropped by the next purge; wake the scheduler so that happens soon.
  cv_.notify_one();
  return true;
}

void DynamicBatcher::close(bool drain) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!closing_) {
      closing_ = true;
      drain_ = drain;
    } else if (!drain) {
      drain_ = false;  // a later close(false) may cut a drain short
    }
  }
  cv_.notify_all();
  if (std::this_thread::get_id() == thread_id_) return;  // cannot join itself
  std::lock_guard<std::mutex> jl(join_mu_);
  if (thread_.joinable()) thread_.join();
}

bool DynamicBatcher::closed() const {
  std::lock_guard<std::mutex> lk(mu_);
  return closing_;
}

BatcherStats DynamicBatcher::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  BatcherStats s = stats_;
  s.pending_requests = static_cast<int64_t>(live_.size());
  return s;
}

bool DynamicBatcher::due_locked(BatcherClock::time_point now) const {
  if (queue_.empty()) return false;
  if (closing_) return true;
  if (stats_.queued_posts >= opt_.max_batch_size || stats_.queued_tokens >= opt_.max_batch_tokens) return true;
  return now - queue_.front().enqueued >= std::chrono::microseconds(opt_.max_wait_us);
}

BatcherClock::time_point DynamicBatcher::purge_locked(BatcherClock::time_point now, std::vector<Completion>& done) {
  auto next_deadline = BatcherClock::time_point::max();
  auto keep = queue_.begin();
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    Request& r = *it->req;
    if (!r.finished && now >= r.deadline) {
      r.finished = true;
      live_.erase(r.ticket);
      ++stats_.requests_expired;
      Completion c;
      c.ticket = r.ticket;
      c.status = RequestStatus::kDeadlineExceeded;
      c.rows = r.rows;
      c.queue_seconds = seconds_between(r.enqueued, now);
      c.message = "the request's deadline passed after " + std::to_string(c.queue_seconds) +
                  " s in the batcher queue; it was not computed.";
      done.push_back(std::move(c));
    }
    if (r.finished) {
      --stats_.queued_posts;
      stats_.queued_tokens -= it->len;
      continue;
    }
    next_deadline = std::min(next_deadline, r.deadline);
    if (keep != it) *keep = std::move(*it);
    ++keep;
  }
  queue_.erase(keep, queue_.end());
  return next_deadline;
}

void DynamicBatcher::fail_all_locked(RequestStatus status, const std::string& message, std::vector<Completion>& done) {
  for (const Post& p : queue_) {
    Request& r = *p.req;
    if (r.finished) continue;
    r.finished = true;
    live_.erase(r.ticket);
    ++stats_.requests_closed;
    Completion c;
    c.ticket = r.ticket;
    c.status = status;
    c.rows = r.rows;
    c.message = message;
    done.push_back(std::move(c));
  }
  queue_.clear();
  stats_.queued_posts = 0;
  stats_.queued_tokens = 0;
}

DynamicBatcher::Batch DynamicBatcher::form_locked() {
  // Candidates: the oldest `window` posts, sorted by (length, arrival). Cut that sorted list
  // into contiguous groups minimising sum(batch_overhead_tokens + rows x width) under the
  // row and token limits (exact DP, O(window x max_batch_size)); run the group holding the
  // oldest post. Contiguous groups of sorted lengths are optimal for this cost: swapping two
  // posts across groups never lowers either group's width.
  const size_t n = std::min(queue_.size(), static_cast<size_t>(opt_.window));
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [this](size_t a, size_t b) {
    return queue_[a].len != queue_[b].len ? queue_[a].len < queue_[b].len : a < b;
  });
  const auto overhead = static_cast<double>(opt_.batch_overhead_tokens);
  std::vector<double> best(n + 1, 0.0);  // best[j]: cost of grouping order[0..j)
  std::vector<size_t> cut(n + 1, 0);      // the group ending at j starts at cut[j]
  for (size_t j = 1; j <= n; ++j) {
    const int64_t width = queue_[order[j - 1]].len;
    best[j] = -1;
    for (size_t rows = 1; rows <= j && static_cast<int64_t>(rows) <= opt_.max_batch_size; ++rows) {
      // A single post always forms a group, even one longer than the budget would allow.
      if (rows > 1 && static_cast<int64_t>(rows) * width > opt_.max_batch_tokens) break;
      const double c = best[j - rows] + overhead + static_cast<double>(rows) * static_cast<double>(width);
      if (best[j] < 0 || c < best[j]) {
        best[j] = c;
        cut[j] = j - rows;
      }
    }
  }
  const size_t anchor = static_cast<size_t>(std::find(order.begin(), order.end(), size_t{0}) - order.begin());
  size_t hi = n, lo = cut[n];
  while (anchor < lo) {
    hi = lo;
    lo = cut[hi];
  }
  std::vector<size_t> chosen(order.begin() + static_cast<std::ptrdiff_t>(lo),
                             order.begin() + static_cast<std::ptrdiff_t>(hi));
  const int64_t width = queue_[order[hi - 1]].len;
  std::sort(chosen.begin(), chosen.end());
  Batch b;
  b.width = width;
  b.posts.reserve(chosen.size());
  for (size_t i : chosen) {
    b.posts.push_back(std::move(queue_[i]));
    --stats_.queued_posts;
    stats_.queued_tokens -= b.posts.back().len;
  }
  // Remove the chosen slots (now moved-from) keeping arrival order.
  size_t k = 0, c = 0;
  for (size_t i = 0; i < queue_.size(); ++i) {
    if (c < chosen.size() && chosen[c] == i) {
      ++c;
      continue;
    }
    if (k != i) queue_[k] = std::move(queue_[i]);
    ++k;
  }
  queue_.resize(k);
  stats_.in_flight_posts = static_cast<int64_t>(b.posts.size());
  return b;
}

void DynamicBatcher::run_batch(Batch& batch, std::vector<Completion>& done) {
  const auto start = BatcherClock::now();
  const auto rows = static_cast<int64_t>(batch.posts.size());
  // Pack: the rows were moved out of their requests when the batch was formed.
  std::vector<std::vector<int64_t>> ids_rows(batch.posts.size());
  int64_t real = 0;
  for (size_t i = 0; i < batch.posts.size(); ++i) {
    Post& p = batch.posts[i];
    ids_rows[i] = std::move(p.req->posts[static_cast<size_t>(p.row)]);
    real += p.len;
  }
  std::vector<int64_t> ids(static_cast<size_t>(rows * batch.width));
  std::vector<int64_t> mask(ids.size());
  pack_padded(ids_rows, opt_.pad_id, batch.width, ids.data(), mask.data());

  std::vector<float> out;
  int64_t dim = 0;
  std::string error;
  try {
    run_(BatchView{ids.data(), mask.data(), rows, batch.width}, out, dim);
    if (dim < 1 || static_cast<int64_t>(out.size()) != rows * dim)
      error = "the model returned " + std::to_string(out.size()) + " values for " + std::to_string(rows) +
              " rows (dim " + std::to_string(dim) + "); expected rows x dim.";
  } catch (const std::exception& e) {
    error = e.what();
    if (error.empty()) error = "the model raised an exception without a message.";
  } catch (...) {
    error = "the model raised a non-standard exception.";
  }
  const auto end = BatcherClock::now();
  const double infer = seconds_between(start, end);

  // Scatter (scheduler-owned request fields: no lock needed).
  if (error.empty()) {
    for (size_t i = 0; i < batch.posts.size(); ++i) {
      Request& r = *batch.posts[i].req;
      if (r.dim == 0) {
        r.dim = dim;
        r.values.assign(static_cast<size_t>(r.rows * dim), 0.0f);
      }
      if (r.dim == dim)
        std::copy_n(out.data() + i * dim, dim, r.values.data() + batch.posts[i].row * dim);
    }
  }
  std::lock_guard<std::mutex> lk(mu_);
  ++stats_.batches;
  stats_.in_flight_posts = 0;
  stats_.inference_seconds.observe(infer);
  stats_.batch_size.observe(static_cast<double>(rows));
  if (!error.empty()) ++stats_.batches_failed;
  const int64_t padded = rows * batch.width;
  stats_.posts_computed += static_cast<uint64_t>(rows);
  stats_.tokens_computed += static_cast<uint64_t>(real);
  stats_.padded_tokens_computed += static_cast<uint64_t>(padded);
  stats_.batch_padding_ratio.observe(1.0 - static_cast<double>(real) / static_cast<double>(padded));
  for (Post& p : batch.posts) {
    Request& r = *p.req;
    stats_.queue_seconds.observe(seconds_between(p.enqueued, start));
    r.queue_seconds = std::max(r.queue_seconds, seconds_between(p.enqueued, start));
    r.inference_seconds += infer;  // a request in several batches pays for each
    --r.remaining;
    if (r.finished) continue;  // cancelled, expired or failed earlier
    if (!error.empty() || (r.dim != dim)) {
      r.finished = true;
      live_.erase(r.ticket);
      ++stats_.requests_failed;
      Completion c;
      c.ticket = r.ticket;
      c.status = RequestStatus::kBackendError;
      c.rows = r.rows;
      c.message = error.empty() ? "the model returned rows of different widths for one request." : error;
      c.queue_seconds = r.queue_seconds;
      c.inference_seconds = r.inference_seconds;
      done.push_back(std::move(c));
    } else if (r.remaining == 0) {
      r.finished = true;
      live_.erase(r.ticket);
      ++stats_.requests_ok;
      Completion c;
      c.ticket = r.ticket;
      c.rows = r.rows;
      c.dim = r.dim;
      c.values = std::move(r.values);
      c.queue_seconds = r.queue_seconds;
      c.inference_seconds = r.inference_seconds;
      done.push_back(std::move(c));
    }
  }
}

void DynamicBatcher::deliver(std::vector<Completion>& done) {
  if (done.empty()) return;
  try {
    on_done_(done);
  } catch (...) {
    // Documented: the callback must not throw; the scheduler keeps serving regardless.
  }
  done.clear();
}

void DynamicBatcher::loop() {
  std::vector<Completion> done;
  for (;;) {
    Batch batch;
    bool exit_after = false;
    {
      std::unique_lock<std::mutex> lk(mu_);
      for (;;) {
        const auto now = BatcherClock::now();
        const auto next_deadline = purge_locked(now, done);
        if (closing_ && !drain_) {
          fail_all_locked(RequestStatus::kClosed, "the batcher was closed before this request was computed.", done);
          exit_after = true;
          break;
        }
        if (!done.empty()) break;  // deliver expiries before waiting or running
        if (queue_.empty()) {
          if (closing_) {
            exit_after = true;
            break;
          }
          cv_.wait(lk);
          continue;
        }
        if (due_locked(now)) {
          batch = form_locked();
          break;
        }
        // Wake when the oldest post has waited max_wait_us or a queued request's deadline passes
        // (its caller hears of it then, not only when a batch is due), or earlier on submit/close.
        cv_.wait_until(lk, std::min(queue_.front().enqueued + std::chrono::microseconds(opt_.max_wait_us),
                                    next_deadline));
      }
    }
    if (!batch.posts.empty()) run_batch(batch, done);
    batch.posts.clear();  // drop request references before the callback runs
    deliver(done);
    if (exit_after) {
      std::lock_guard<std::mutex> lk(mu_);
      if (queue_.empty()) return;
    }
  }
}

}  // namespace postemb
