// vbus on rings, with the broker waking parked host clients by FUTEX_WAKE instead of a
// DOORBELL frame on their socket (`wake: "futex"`).
import { vbusSystem } from "./_vbus.ts";
export default vbusSystem("vbus-ring-futex", true, "futex");
