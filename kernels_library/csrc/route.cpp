// The kernel library's C++ route: a boxed kernel registered in place of the runtime's Python
// kernel at each (ATen operator, dispatch key) the runtime overrides (kernels_library/runtime.py).
//
// Per call it builds a key from the boxed arguments (per tensor: device, dtype, sizes, strides,
// requires_grad; ints, floats, bools, strings, None and int lists by value) and the global state
// the Python decision reads (grad mode). A key the Python side has decided to leave to PyTorch
// (and said so with `Route.remember`) is answered here: PyTorch's original kernel is called and
// a per-reason counter bumped, without Python or the GIL. Anything else (a new key, a call that
// the library serves, a tensor subclass or Python-keyed tensor, an active TorchDispatchMode, a
// call from inside a library kernel, an argument type without a key form) goes to the Python
// kernel, with the GIL, exactly as a torch.library Python kernel would be called.

#include <ATen/core/boxing/KernelFunction.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/SafePyObject.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/PyInterpreterHooks.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/csrc/utils/pybind.h>

#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

constexpr int kMaxReasons = 64;
constexpr size_t kMaxKeys = 4096;

using Key = std::vector<int64_t>;

struct KeyHash {
  size_t operator()(const Key& key) const noexcept {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ key.size();
    for (int64_t v : key) {
      h ^= static_cast<uint64_t>(v) + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
    }
    return static_cast<size_t>(h);
  }
};

// 0 outside the library; non-zero inside a library kernel or a runtime bypass (mirrors the
// Python runtime's per-thread `depth`): such calls always go to Python.
thread_local int t_depth = 0;

PyTypeObject* g_tensor_type = nullptr;
PyTypeObject* g_parameter_type = nullptr;

enum Tag : int64_t {
  kUndefined = 1,
  kTensor,
  kNone,
  kBool,
  kInt,
  kDouble,
  kString,
  kIntList,
};

// Appends the key form of one argument; false when it has none (the call goes to Python).
bool append_key(const c10::IValue& v, Key& key) {
  if (v.isTensor()) {
    const at::Tensor& t = v.toTensor();
    if (!t.defined()) {
      key.push_back(kUndefined);
      return true;
    }
    c10::TensorImpl* impl = t.unsafeGetTensorImpl();
    const c10::DispatchKeySet keys = impl->key_set();
    if (keys.has(c10::DispatchKey::Python) || keys.has(c10::DispatchKey::PythonTLSSnapshot) ||
        impl->layout() != c10::kStrided || impl->has_symbolic_sizes_strides()) {
      return false;
    }
    // a tensor subclass (the Python decision looks at the exact type): not answered here
    PyObject* obj = impl->pyobj_slot()->load_pyobj();
    if (obj != nullptr && Py_TYPE(obj) != g_tensor_type && Py_TYPE(obj) != g_parameter_type) {
      return false;
    }
    const c10::Device device = impl->device();
    const auto sizes = impl->sizes();
    const auto strides = impl->strides();
    key.push_back(kTensor);
    key.push_back(static_cast<int64_t>(device.type()));
    key.push_back(device.index());
    key.push_back(static_cast<int64_t>(impl->dtype().toScalarType()));
    key.push_back(t.requires_grad());
    key.push_back(static_cast<int64_t>(sizes.size()));
    key.insert(key.end(), sizes.begin(), sizes.end());
    key.insert(key.end(), strides.begin(), strides.end());
    return true;
  }
  if (v.isNone()) {
    key.push_back(kNone);
  } else if (v.isBool()) {
    key.push_back(kBool);
    key.push_back(v.toBool());
  } else if (v.isInt()) {
    key.push_back(kInt);
    key.push_back(v.toInt());
  } else if (v.isDouble()) {
    const double d = v.toDouble();
    int64_t bits = 0;
    std::memcpy(&bits, &d, sizeof(bits));
    key.push_back(kDouble);
    key.push_back(bits);
  } else if (v.isString()) {
    const std::string& s = v.toStringRef();
    key.push_back(kString);
    key.push_back(static_cast<int64_t>(s.size()));
    for (size_t i = 0; i < s.size(); i += sizeof(int64_t)) {
      int64_t chunk = 0;
      std::memcpy(&chunk, s.data() + i, std::min(sizeof(int64_t), s.size() - i));
      key.push_back(chunk);
    }
  } else if (v.isIntList()) {
    const auto values = v.toIntList();
    key.push_back(kIntList);
    key.push_back(static_cast<int64_t>(values.size()));
    for (const int64_t x : values) {
      key.push_back(x);
    }
  } else {
    return false;
  }
  return true;
}

// The key of a call, or false when the call has none.
bool call_key(const torch::jit::Stack& stack, size_t num_arguments, Key& key) {
  if (t_depth != 0 || c10::impl::TorchDispatchModeTLS::stack_len() > 0 ||
      c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::Python)) {
    return false;
  }
  key.clear();
  key.push_back(c10::GradMode::is_enabled());
  const size_t first = stack.size() - num_arguments;
  for (size_t i = first; i < stack.size(); ++i) {
    if (!append_key(stack[i], key)) {
      return false;
    }
  }
  return true;
}

struct RouteState {
  RouteState(c10::SafeKernelFunction original, PyObject* python_kernel)
      : original(std::move(original)),
        python_kernel(python_kernel, c10::impl::getGlobalPyInterpreter()) {}

  c10::SafeKernelFunction original;
  c10::SafePyObject python_kernel;
  std::shared_mutex mutex;
  std::unordered_map<Key, int, KeyHash> decided;
  std::array<std::atomic<int64_t>, kMaxReasons> counts{};
};

// The call whose key the running Python kernel may remember (per thread; nested calls save and
// restore it).
struct Pending {
  RouteState* state;
  Key key;
};
thread_local Pending* t_pending = nullptr;

struct PendingScope {
  explicit PendingScope(Pending* pending) : saved(t_pending) { t_pending = pending; }
  ~PendingScope() { t_pending = saved; }
  Pending* saved;
};

void call_python(
    RouteState& state,
    const c10::OperatorHandle& op,
    torch::jit::Stack* stack,
    Pending* pending) {
  const auto& schema = op.schema();
  const size_t num_arguments = schema.arguments().size();
  auto arguments = torch::jit::pop(*stack, num_arguments);
  PendingScope scope(pending);
  py::gil_scoped_acquire gil;
  py::list positional;
  py::dict kwargs;
  for (size_t i = 0; i < num_arguments; ++i) {
    const auto& argument = schema.arguments()[i];
    py::object value = torch::jit::toPyObject(std::move(arguments[i]));
    if (argument.kwarg_only()) {
      kwargs[py::str(argument.name())] = value;
    } else {
      positional.append(value);
    }
  }
  PyObject* kernel = state.python_kernel.ptr(c10::impl::getGlobalPyInterpreter());
  py::tuple args(positional);
  PyObject* result = PyObject_Call(kernel, args.ptr(), kwargs.ptr());
  if (result == nullptr) {
    throw py::error_already_set();
  }
  py::object out = py::reinterpret_steal<py::object>(result);
  const auto& returns = schema.returns();
  if (returns.size() == 1) {
    stack->push_back(torch::jit::toIValue(out, returns[0].real_type(), std::nullopt));
    return;
  }
  py::tuple outs = py::cast<py::tuple>(out);
  TORCH_CHECK(
      outs.size() == returns.size(),
      "forge route: the Python kernel returned ",
      outs.size(),
      " values for ",
      returns.size(),
      " returns");
  for (size_t i = 0; i < returns.size(); ++i) {
    stack->push_back(torch::jit::toIValue(outs[i], returns[i].real_type(), std::nullopt));
  }
}

struct RouteKernel final : c10::OperatorKernel {
  explicit RouteKernel(std::shared_ptr<RouteState> state) : state(std::move(state)) {}

  void operator()(
      const c10::OperatorHandle& op,
      c10::DispatchKeySet keyset,
      torch::jit::Stack* stack) {
    thread_local Key key;
    const size_t num_arguments = op.schema().arguments().size();
    if (!call_key(*stack, num_arguments, key)) {
      call_python(*state, op, stack, nullptr);
      return;
    }
    int reason = -1;
    {
      std::shared_lock<std::shared_mutex> lock(state->mutex);
      auto found = state->decided.find(key);
      if (found != state->decided.end()) {
        reason = found->second;
      }
    }
    if (reason >= 0) {
      state->counts[reason].fetch_add(1, std::memory_order_relaxed);
      state->original.callBoxed(op, keyset, stack);
      return;
    }
    Pending pending{state.get(), key};
    call_python(*state, op, stack, &pending);
  }

  std::shared_ptr<RouteState> state;
};

// Remembers the key of the call whose Python kernel is running on this thread as decided for
// PyTorch (reason id `reason`); false when that call has no key (or it was already remembered).
bool remember(int reason) {
  TORCH_CHECK(reason >= 0 && reason < kMaxReasons, "forge route: reason id out of range");
  Pending* pending = t_pending;
  if (pending == nullptr) {
    return false;
  }
  RouteState& state = *pending->state;
  std::unique_lock<std::shared_mutex> lock(state.mutex);
  if (state.decided.size() >= kMaxKeys) {
    state.decided.clear();
  }
  state.decided.emplace(std::move(pending->key), reason);
  t_pending = nullptr;
  return true;
}

// One registration, as Python holds it.
class Route {
 public:
  Route(const std::string& name, const std::string& dispatch_key, py::object python_kernel,
        const std::string& debug) {
    TORCH_CHECK(g_tensor_type != nullptr, "forge route: call init() first");
    auto& dispatcher = c10::Dispatcher::singleton();
    const auto separator = name.find('.');
    const std::string op_name = name.substr(0, separator);
    const std::string overload = separator == std::string::npos ? "" : name.substr(separator + 1);
    const auto handle = dispatcher.findSchemaOrThrow(op_name.c_str(), overload.c_str());
    const c10::DispatchKey key = c10::parseDispatchKey(dispatch_key);
    state_ = std::make_shared<RouteState>(
        handle.getComputedKernelForDispatchKey(key), python_kernel.release().ptr());
    // the dispatcher warns that an ATen kernel is being overridden: as a Python warning
    torch::PyWarningHandler warnings;
    registration_.emplace(dispatcher.registerImpl(
        c10::OperatorName(op_name, overload),
        key,
        c10::KernelFunction::makeFromBoxedFunctor(std::make_unique<RouteKernel>(state_)),
        std::nullopt,
        nullptr,
        debug));
  }

  // The counts since the last drain, by reason id (zeroed).
  std::vector<std::pair<int, int64_t>> drain() {
    std::vector<std::pair<int, int64_t>> out;
    for (int i = 0; i < kMaxReasons; ++i) {
      const int64_t n = state_->counts[i].exchange(0, std::memory_order_relaxed);
      if (n != 0) {
        out.emplace_back(i, n);
      }
    }
    return out;
  }

  size_t known() {
    std::shared_lock<std::shared_mutex> lock(state_->mutex);
    return state_->decided.size();
  }

  void forget() {
    std::unique_lock<std::shared_mutex> lock(state_->mutex);
    state_->decided.clear();
  }

  void unregister() {
    registration_.reset();
    forget();
  }

  bool registered() const { return registration_.has_value(); }

 private:
  std::shared_ptr<RouteState> state_;
  std::optional<c10::RegistrationHandleRAII> registration_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "The kernel library's C++ route for calls the library does not serve";
  m.attr("MAX_REASONS") = kMaxReasons;
  m.attr("MAX_KEYS") = kMaxKeys;
  m.def(
      "init",
      [](py::object tensor_type, py::object parameter_type) {
        g_tensor_type = reinterpret_cast<PyTypeObject*>(tensor_type.release().ptr());
        g_parameter_type = reinterpret_cast<PyTypeObject*>(parameter_type.release().ptr());
      },
      "The exact Python types of plain tensors (torch.Tensor, torch.nn.Parameter)");
  m.def(
      "set_depth",
      [](int depth) {
        const int previous = t_depth;
        t_depth = depth;
        return previous;
      },
      "This thread's re-entrancy depth (mirrors the runtime's); returns the previous one");
  m.def("remember", &remember, py::arg("reason"),
        "Remember the running call's key as decided for PyTorch with this reason id");
  py::class_<Route>(m, "Route")
      .def(py::init<const std::string&, const std::string&, py::object, const std::string&>(),
           py::arg("name"), py::arg("dispatch_key"), py::arg("python_kernel"), py::arg("debug"))
      .def("drain", &Route::drain)
      .def("known", &Route::known)
      .def("forget", &Route::forget)
      .def("unregister", &Route::unregister)
      .def_property_readonly("registered", &Route::registered);
}
