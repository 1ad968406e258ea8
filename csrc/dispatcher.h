// Dispatcher and TraceState: where the model is, and who waits for what.
//
//   Dispatcher d;                               // one per wrapped root model
//   int out = d.intern("model.layer1.output");  // a location: a small integer
//   TraceState t(&d);                           // one per running trace
//   t.park(out, /*mediator=*/0, /*occurrence=*/0);
//   ActiveTrace scope(&t);                      // this thread now runs `t`
//   int64_t k = t.visit(out);                   // the model reached `out` (k-th time)
//   if (t.wanted(out)) t.take(out, k, ready);   // mediators parked there, in order
//
// Plain C++: no Python. Locations are interned once and never removed; a trace
// counts visits per location and holds the parked requests. Callers hold the GIL,
// so a TraceState needs no lock of its own; interning takes one.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace nnsight_fast {

class TraceState;

class Dispatcher {
 public:
  // The id of `name`, created on first use.
  int intern(const std::string& name);
  // The name of a location id.
  std::string name(int location) const;
  int size() const;

  // A model that runs some modules on other OS threads (a thread pool in its forward)
  // sets `threaded`: a Gate reached on a thread that runs no trace and no body then
  // joins the one trace of this dispatcher that is running (see trace_for_other_thread).
  void set_threaded(bool threaded) { threaded_ = threaded; }
  bool threaded() const { return threaded_; }
  void trace_started(TraceState* trace) {
    ++running_count_;
    running_ = trace;
  }
  void trace_ended(TraceState* trace) {
    --running_count_;
    if (running_ == trace) running_ = nullptr;
  }
  bool running() const { return running_count_ > 0; }
  // The trace a visit from another OS thread belongs to: the only running one, if any.
  TraceState* trace_for_other_thread() const { return threaded_ && running_count_ == 1 ? running_ : nullptr; }

  // Plain hooks at locations (HookHandler): opaque callables, applied by the Gate with
  // or without a trace. Reference counts are the caller's business.
  void* hook(int location) const {
    return static_cast<size_t>(location) < hooks_.size() ? hooks_[location] : nullptr;
  }
  void* set_hook(int location, void* hook);  // returns the previous one
  bool has_hooks() const { return hook_count_ != 0; }

 private:
  std::vector<void*> hooks_;
  int hook_count_ = 0;
  bool threaded_ = false;
  int running_count_ = 0;          // traces of this dispatcher running now (GIL-guarded, like the rest)
  TraceState* running_ = nullptr;  // the last one started
  mutable std::mutex mutex_;
  std::unordered_map<std::string, int> ids_;
  std::vector<std::string> names_;
};

class Handoff;

// A mediator of the trace. An input invoke owns rows [row_start, row_start + row_count)
// of the batch; row_count < 0 means it sees the whole batch. `handoff` reaches its
// body (owned by the Python side).
struct MediatorSlot {
  Handoff* handoff = nullptr;
  int64_t row_start = 0;
  int64_t row_count = -1;
};

struct ParkedRequest {
  int mediator;
  int64_t occurrence;
};

class TraceState {
 public:
  explicit TraceState(Dispatcher* dispatcher) : dispatcher_(dispatcher) {}

  Dispatcher* dispatcher() const { return dispatcher_; }

  // The model reached `location`: returns the occurrence index of this visit.
  int64_t visit(int location) {
    if (static_cast<size_t>(location) >= visit_counts_.size()) grow(location);
    return visit_counts_[location]++;
  }
  // True when some mediator waits at `location`.
  bool wanted(int location) const {
    return static_cast<size_t>(location) < wanted_.size() && wanted_[location] != 0;
  }
  // How many times the model has reached `location` in this trace.
  int64_t visits(int location) const {
    return static_cast<size_t>(location) < visit_counts_.size() ? visit_counts_[location] : 0;
  }

  void park(int location, int mediator, int64_t occurrence);
  // Removes every parked request of `mediator`.
  void unpark(int mediator);
  // Moves the mediators parked at (location, occurrence) into `ready`, in mediator order.
  void take(int location, int64_t occurrence, std::vector<int>& ready);
  // The (location, occurrence) whose value the model thread is handing out now;
  // a mediator released from a barrier may still ask for it.
  void set_serving(int location, int64_t occurrence) {
    serving_location_ = location;
    serving_occurrence_ = occurrence;
  }
  bool serving(int location, int64_t occurrence) const {
    return serving_location_ == location && serving_occurrence_ == occurrence;
  }
  // Mediators released from a barrier, waiting for the model thread to resume them.
  void release(int mediator) { released_.push_back(mediator); }
  bool take_released(int& mediator) {
    if (released_.empty()) return false;
    mediator = released_.front();
    released_.erase(released_.begin());
    return true;
  }

  // Marks `location` wanted for the rest of this trace, with no parked request.
  void observe(int location) {
    if (static_cast<size_t>(location) >= wanted_.size()) grow(location);
    ++wanted_[location];
  }

  // Observers see every visit of a location after the mediators' edits (e.g. a cache).
  // They are opaque here; `observe` marks the location wanted.
  void add_observer(int location, void* observer) {
    observers_[location].push_back(observer);
    observe(location);
  }
  template <typename F>
  void for_each_observer(int location, F&& f) const {
    if (observers_.empty()) return;
    auto it = observers_.find(location);
    if (it == observers_.end()) return;
    for (void* o : it->second) f(o);
  }


  // Batch layout: set before the model runs (and again for each step where the batch changes).
  void set_batch(int64_t batch_size, int input_invokes) {
    batch_size_ = batch_size;
    input_invokes_ = input_invokes;
  }
  int64_t batch_size() const { return batch_size_; }
  // Values are narrowed only when two or more input invokes share the batch.
  bool narrows() const { return input_invokes_ >= 2 && batch_size_ > 0; }
  int add_mediator(MediatorSlot slot) {
    mediators_.push_back(slot);
    return static_cast<int>(mediators_.size()) - 1;
  }
  const MediatorSlot& mediator(int index) const { return mediators_[index]; }
  // A server of independent requests (vLLM) keeps the model running when a body fails:
  // that body ends alone, its error kept for its own caller.
  void set_failures_abort(bool abort) { failures_abort_ = abort; }
  bool failures_abort() const { return failures_abort_; }
  // Moves a mediator to other rows (a server whose batch changes between steps).
  void set_rows(int index, int64_t row_start, int64_t row_count) {
    mediators_[index].row_start = row_start;
    mediators_[index].row_count = row_count;
  }
  int mediator_count() const { return static_cast<int>(mediators_.size()); }
  // Back to a new trace's state, keeping the containers' memory (a Trace reused by the
  // next trace of the same model).
  void reset();

 private:
  void grow(int location);

  Dispatcher* dispatcher_;
  std::vector<int64_t> visit_counts_;
  std::vector<uint32_t> wanted_;
  std::unordered_map<int, std::vector<ParkedRequest>> parked_;
  std::vector<MediatorSlot> mediators_;
  std::vector<int> released_;
  std::unordered_map<int, std::vector<void*>> observers_;
  int serving_location_ = -1;
  int64_t serving_occurrence_ = -1;
  int64_t batch_size_ = -1;
  int input_invokes_ = 0;
  bool failures_abort_ = true;
};

// The trace the current thread is running, if any (one per model thread).
TraceState* active_trace();

// Makes `trace` this thread's active trace for the scope's lifetime.
class ActiveTrace {
 public:
  explicit ActiveTrace(TraceState* trace);
  ~ActiveTrace();
  ActiveTrace(const ActiveTrace&) = delete;
  ActiveTrace& operator=(const ActiveTrace&) = delete;

 private:
  TraceState* previous_;
};

// Non-scoped form for Python's `with`: returns the previous active trace.
TraceState* set_active_trace(TraceState* trace);

}  // namespace nnsight_fast
