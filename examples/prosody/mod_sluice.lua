-- mod_sluice: ask sluice before in-band registrations and after failed
-- authentications, so Prosody's per-IP limits hold behind a load balancer
-- and are shared by every node.
--
--   modules_enabled = { ..., "sluice" }
--   sluice_url = "http://127.0.0.1:8470"
--   sluice_fail_open = true   -- what to do when sluice is unreachable
--
-- With sluice's TCP gateway (or HAProxy) in front and mod_net_proxy
-- enabled, session.ip is the real client address.

local http = require "net.http";
local json = require "util.json";
local async = require "util.async";

local base = module:get_option_string("sluice_url", "http://127.0.0.1:8470");
local fail_open = module:get_option_boolean("sluice_fail_open", true);

local function check(action, targets)
	local wait, done = async.waiter();
	local allowed, why = fail_open, "sluice unreachable";
	http.request(base .. "/v1/check", {
		method = "POST";
		headers = { ["Content-Type"] = "application/json" };
		body = json.encode({ action = action; targets = targets });
	}, function (body, code)
		if code == 200 then
			local answer = json.decode(body);
			if answer then
				allowed = answer.allowed;
				why = answer.limit or answer.reason;
			end
		end
		done();
	end);
	wait();
	return allowed, why;
end

module:hook("user-registering", function (event)
	local ip = event.ip or (event.session and event.session.ip);
	local allowed, why = check("registration", { ip = ip });
	if not allowed then
		module:log("info", "registration refused by sluice (%s)", tostring(why));
		event.allowed = false;
		event.reason = "Too many registrations, try again later";
	end
end);

module:hook("authentication-failure", function (event)
	local session = event.session;
	-- Counting failures lets sluice's autoban rules ban password guessers.
	check("authentication_failure", { ip = session and session.ip });
end);
