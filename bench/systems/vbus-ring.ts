// vbus on its fast path: shared-memory rings between each client and the broker.
import { vbusSystem } from "./_vbus.ts";
export default vbusSystem("vbus-ring", true);
