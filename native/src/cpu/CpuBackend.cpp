// CPU backend: host memory figures from /proc and sysconf, stages from CpuStage.
#include "cpu/CpuBackend.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include "core/Errors.h"
#include "cpu/CpuStage.h"

namespace paraserve {

namespace {

std::string cpuModelName() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
    }
  }
  return "cpu";
}

// MemAvailable from /proc/meminfo (what can be allocated without swapping), else free pages.
uint64_t availableBytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string line;
  while (std::getline(meminfo, line)) {
    if (line.rfind("MemAvailable:", 0) == 0) return std::stoull(line.substr(13)) * 1024;
  }
  const long pages = sysconf(_SC_AVPHYS_PAGES);
  const long pageSize = sysconf(_SC_PAGESIZE);
  return pages > 0 && pageSize > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(pageSize) : 0;
}

uint64_t totalBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long pageSize = sysconf(_SC_PAGESIZE);
  return pages > 0 && pageSize > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(pageSize) : 0;
}

}  // namespace

std::vector<DeviceInfo> CpuBackend::listDevices() {
  DeviceInfo device;
  device.index = 0;
  device.kind = BackendKind::Cpu;
  device.name = cpuModelName() + " (" + std::to_string(std::thread::hardware_concurrency()) + " threads)";
  device.totalBytes = totalBytes();
  device.freeBytes = availableBytes();
  return {device};
}

std::unique_ptr<HostBuffer> CpuBackend::allocHost(uint64_t bytes, bool) { return HostBuffer::allocatePageable(bytes); }

namespace {

double timedCopy(uint8_t* to, const uint8_t* from, uint64_t bytes) {
  const auto start = std::chrono::steady_clock::now();
  std::memcpy(to, from, static_cast<size_t>(bytes));
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void requireDeviceZero(int64_t device) {
  if (device != 0) throw InvalidArgumentError("the cpu backend has one device, 0; got " + std::to_string(device));
}

}  // namespace

double CpuBackend::measureHostToDevice(const HostBuffer& buffer, int64_t device) {
  requireDeviceZero(device);
  const auto target = HostBuffer::allocatePageable(buffer.bytes());
  std::memset(target->data(), 0, static_cast<size_t>(buffer.bytes()));  // fault the pages in first
  return timedCopy(target->data(), buffer.data(), buffer.bytes());
}

double CpuBackend::measureDeviceMemory(int64_t device, uint64_t bytes) {
  requireDeviceZero(device);
  const auto from = HostBuffer::allocatePageable(bytes);
  const auto to = HostBuffer::allocatePageable(bytes);
  std::memset(from->data(), 1, static_cast<size_t>(bytes));
  std::memset(to->data(), 0, static_cast<size_t>(bytes));
  return timedCopy(to->data(), from->data(), bytes);
}

std::unique_ptr<Stage> CpuBackend::createStage(const StageSpec& spec) {
  if (spec.device != 0) {
    throw InvalidArgumentError("the cpu backend has one device, 0; spec.device is " + std::to_string(spec.device));
  }
  if (spec.computeDType != DType::F32) {
    throw InvalidArgumentError(std::string("the cpu backend computes in f32 only; spec.computeDType is '") +
                               dtypeName(spec.computeDType) + "'");
  }
  return std::make_unique<cpu::CpuStage>(spec);
}

}  // namespace paraserve
