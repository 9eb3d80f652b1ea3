// vbus on the port stream alone (what a guest without ivshmem uses).
import { vbusSystem } from "./_vbus.ts";
export default vbusSystem("vbus-port", false);
