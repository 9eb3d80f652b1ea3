// Peer: raw Unix domain socket through a relay process. See bench/lib/rawsock.ts.
import { rawSocketSystem } from "../lib/rawsock.ts";
export default rawSocketSystem("unix");
