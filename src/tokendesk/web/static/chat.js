/* tokendesk chat app entry point. Plain ES modules: no build step, no network. */
import { startBalance } from "./chat/balance.js";
import { accountMenu } from "./chat/common.js";
import { startConversation } from "./chat/conversation.js";
import { startSettings } from "./chat/settings.js";

accountMenu();
const bootNode = document.getElementById("chat-boot");
if (bootNode) {
  const boot = JSON.parse(bootNode.textContent);
  startConversation(boot, startBalance(boot));
}
if (document.getElementById("key-form")) startSettings();
