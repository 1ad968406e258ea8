#include "dispatcher.h"

#include <algorithm>
#include <stdexcept>
#include <tuple>

namespace nnsight_fast {

namespace {
thread_local TraceState* tls_active_trace = nullptr;
}

int Dispatcher::intern(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = ids_.find(name);
  if (it != ids_.end()) return it->second;
  const int id = static_cast<int>(names_.size());
  names_.push_back(name);
  ids_.emplace(name, id);
  return id;
}

std::string Dispatcher::name(int location) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (location < 0 || static_cast<size_t>(location) >= names_.size())
    throw std::out_of_range("unknown location id " + std::to_string(location));
  return names_[location];
}

int Dispatcher::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(names_.size());
}

void* Dispatcher::set_hook(int location, void* hook) {
  if (static_cast<size_t>(location) >= hooks_.size()) hooks_.resize(static_cast<size_t>(location) + 1, nullptr);
  void* previous = hooks_[location];
  hooks_[location] = hook;
  hook_count_ += (hook != nullptr) - (previous != nullptr);
  return previous;
}

void TraceState::reset() {
  std::fill(visit_counts_.begin(), visit_counts_.end(), 0);
  std::fill(wanted_.begin(), wanted_.end(), 0);
  parked_.clear();
  mediators_.clear();
  released_.clear();
  observers_.clear();
  serving_location_ = -1;
  serving_occurrence_ = -1;
  batch_size_ = -1;
  input_invokes_ = 0;
  failures_abort_ = true;
}

void TraceState::grow(int location) {
  const size_t size = std::max<size_t>(static_cast<size_t>(location) + 1, dispatcher_->size());
  if (visit_counts_.size() < size) visit_counts_.resize(size, 0);
  if (wanted_.size() < size) wanted_.resize(size, 0);
}

void TraceState::park(int location, int mediator, int64_t occurrence) {
  if (static_cast<size_t>(location) >= wanted_.size()) grow(location);
  parked_[location].push_back(ParkedRequest{mediator, occurrence});
  ++wanted_[location];
}

void TraceState::unpark(int mediator) {
  for (auto& [location, requests] : parked_) {
    const auto before = requests.size();
    requests.erase(std::remove_if(requests.begin(), requests.end(),
                                  [&](const ParkedRequest& r) { return r.mediator == mediator; }),
                   requests.end());
    wanted_[location] -= static_cast<uint32_t>(before - requests.size());
  }
}

void TraceState::take(int location, int64_t occurrence, std::vector<int>& ready) {
  ready.clear();
  auto it = parked_.find(location);
  if (it == parked_.end()) return;
  auto& requests = it->second;
  for (auto r = requests.begin(); r != requests.end();) {
    if (r->occurrence == occurrence) {
      ready.push_back(r->mediator);
      r = requests.erase(r);
      --wanted_[location];
    } else {
      ++r;
    }
  }
  std::sort(ready.begin(), ready.end());
}

TraceState* active_trace() { return tls_active_trace; }

TraceState* set_active_trace(TraceState* trace) {
  TraceState* previous = tls_active_trace;
  tls_active_trace = trace;
  return previous;
}

ActiveTrace::ActiveTrace(TraceState* trace) : previous_(set_active_trace(trace)) {}
ActiveTrace::~ActiveTrace() { set_active_trace(previous_); }

}  // namespace nnsight_fast
