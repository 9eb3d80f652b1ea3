/**
 * vbus: a publish/subscribe message bus between VM guests and their host over virtio-serial,
 * with a zero-copy shared-memory fast path.
 *
 * @example
 * ```ts
 * import { connect } from "./mod.ts";
 * const bus = await connect(); // in a guest: /dev/virtio-ports/org.vbus.0
 * bus.subscribe<string>("greetings.>", { callback: (_err, msg) => console.log(msg.data) });
 * await bus.publish("greetings.hello", "hi");
 * const answer = await bus.request<number>("math.double", 21, { timeout: 1000 });
 * console.log(answer.data); // 42, if a service answers
 * ```
 * @module
 */
export {
  Bus,
  type ClientStats,
  connect,
  type FutexSleepCounts,
  type SessionInfo,
} from "./src/client/bus.ts";
export type { RingChannelStats } from "./src/shm/ring_channel.ts";
export { Msg } from "./src/client/msg.ts";
export { Subscription } from "./src/client/subscription.ts";
export type {
  ConnectOptions,
  LocalBroker,
  PublishOptions,
  RequestOptions,
  SubscribeOptions,
} from "./src/client/options.ts";
export type { StatusEvent, StatusType } from "./src/client/status.ts";
export { ErrorCode, VbusError } from "./src/protocol/errors.ts";
export type { Headers } from "./src/protocol/ops.ts";
export { matches, validatePattern, validateSubject } from "./src/subject/subject.ts";
export { Broker, type BrokerOptions, RELOAD_SUBJECT, STATS_SUBJECT } from "./src/broker/broker.ts";
export {
  type BrokerConfig,
  ConfigError,
  loadConfig,
  parseConfig,
  type Permissions,
  type VmConfig,
} from "./src/broker/config.ts";
export type { BrokerStats, EndpointStats } from "./src/broker/stats.ts";
export type { SessionStats, SubscriptionStats } from "./src/broker/session_stats.ts";
export type { RingFill } from "./src/ring/fill.ts";
export type { Port, PortOpener } from "./src/port/port.ts";
export { createLogger, type Logger, type LoggerOptions, LogSettingsError } from "./src/util/log.ts";
export type { ErrorCodeValue } from "./src/protocol/errors.ts";
export type { LogFormat, LogLevel } from "./src/util/log.ts";
export type { FileAccess, NamedId } from "./src/broker/file_access.ts";
export type { Limits } from "./src/protocol/limits.ts";
export type { HttpAddress } from "./src/monitor/http_address.ts";
export type { Bridge } from "./src/bridge/bridge.ts";
export type { BridgeStats } from "./src/bridge/bridge_stats.ts";
export type {
  BridgeConfig,
  NatsAuth,
  NatsBridgeConfig,
  NatsBridgeLimits,
  NatsTls,
} from "./src/bridge/bridge_config.ts";
export type { SubjectRule } from "./src/bridge/subject_map.ts";
