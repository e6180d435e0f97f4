-- mod_sluice: ask sluice before in-band registrations and authentications,
-- and report failed authentications, so Prosody's per-IP limits hold behind
-- a load balancer, are shared by every node, and password guessers get
-- banned by sluice's autoban rules.
--
--   plugin_paths = { "/usr/local/lib/prosody-sluice" }
--   modules_enabled = { ..., "sluice" }
--   sluice_url = "http://127.0.0.1:8470"
--   sluice_timeout = 0.25     -- seconds; sluice answers in well under a millisecond
--   sluice_on_error = "allow" -- or "deny": what to do when sluice fails
--
-- Refusals are answered as Prosody's own throttles answer (mod_register_limits:
-- a `wait`-type `policy-violation` with a text), with when to retry from
-- sluice's answer. Failures of sluice (unreachable, slower than
-- sluice_timeout, an answer that is not a decision) follow sluice_on_error.
-- Client addresses are not logged (sluice hashes them in its own logs).
--
-- With sluice's TCP gateway (or HAProxy) in front and mod_net_proxy
-- enabled, session.ip is the real client address.
--
-- Federation, outgoing (Prosody 0.12.4 and later: the s2sout-pre-connect
-- event):
--
--   sluice_s2s_relay = "127.0.0.1:15269"  -- every s2s-out through sluice's
--                                          -- outgoing relay (direction = "outgoing")
--   sluice_check_outgoing = true          -- each stanza to a remote domain is
--                                          -- checked as the federation action
--                                          -- `outgoing`, with the destination
--                                          -- server and the local sender
--
-- A denied stanza is bounced to its sender with
-- <error type='wait'><resource-constraint/></error> (and dropped when it
-- is itself an error or a result, as RFC 6120 §8.3.1 asks). The local
-- account is the only name for the abuser that no one else can see.

local http = require "net.http";
local json = require "util.json";
local async = require "util.async";
local errors = require "util.error";
local st = require "util.stanza";

local base = module:get_option_string("sluice_url", "http://127.0.0.1:8470"):gsub("/+$", "");
local timeout = module:get_option_number("sluice_timeout", 0.25);
-- COMPAT sluice_fail_open (a boolean) before sluice_on_error.
local on_error = module:get_option_string("sluice_on_error",
	module:get_option_boolean("sluice_fail_open", true) and "allow" or "deny");
if on_error ~= "allow" and on_error ~= "deny" then
	module:log("error", "sluice_on_error must be \"allow\" or \"deny\", not %q; using \"deny\"", on_error);
	on_error = "deny";
end
local fail_open = on_error == "allow";
local s2s_relay = module:get_option_string("sluice_s2s_relay", nil);
local check_outgoing = module:get_option_boolean("sluice_check_outgoing", false);

local xmlns_sasl = "urn:ietf:params:xml:ns:xmpp-sasl";

-- One POST /v1/check. Returns the decision (`allowed`, `retry_after_ms`,
-- `why`), or nil and the reason sluice gave none.
local function ask(action, targets, dry_run, side)
	local wait, done = async.waiter();
	local answer, failure;
	local finished = false;
	local function finish() if not finished then finished = true; done(); end end
	local req = http.request(base .. "/v1/check", {
		method = "POST";
		headers = { ["Content-Type"] = "application/json" };
		body = json.encode({ action = action; side = side; targets = targets; dry_run = dry_run or nil });
		suppress_errors = true;
	}, function (body, code)
		if code ~= 200 then
			failure = code == 0 and tostring(body) or ("HTTP " .. tostring(code));
		else
			local a = json.decode(body or "");
			if type(a) ~= "table" or type(a.allowed) ~= "boolean" then
				failure = "answer is not a decision";
			elseif a.retry_after_ms ~= nil and (type(a.retry_after_ms) ~= "number" or a.retry_after_ms < 0) then
				failure = "answer has no valid retry_after_ms";
			else
				answer = { allowed = a.allowed; retry_after_ms = a.retry_after_ms or 0;
					why = a.limit or a.reason };
			end
		end
		finish();
	end);
	-- net.http has no timeout of its own: cancelling calls the callback (code 0).
	local timer = module:add_timer(timeout, function ()
		if not finished and req and req.cancel then req:cancel("timed out"); end
		if not finished then failure = "timed out"; finish(); end
	end);
	if not req then failure = failure or "request not sent"; finish(); end
	wait();
	if timer and timer.stop then timer:stop(); end
	return answer, failure;
end

-- The decision, with on_error applied: allowed, retry_after_ms (nil: unknown), failed.
local function check(action, targets, dry_run, side)
	local answer, failure = ask(action, targets, dry_run, side);
	if not answer then
		module:log("warn", "sluice failed (%s, %s): %s", action, fail_open and "allowed" or "denied", failure);
		return fail_open, nil, true;
	end
	if not answer.allowed then
		-- `why` names the limit, or says banned/blocked: never an address.
		module:log("info", "sluice denied %s: %s", action, tostring(answer.why));
	end
	return answer.allowed, answer.retry_after_ms, false;
end

-- "in 6 minutes": when to retry, rounded up, in the largest sensible unit.
local function when(ms)
	if not ms then return "later"; end
	local s = math.ceil(ms / 1000);
	local function n(v, unit) v = math.ceil(v); return ("in %d %s%s"):format(v, unit, v == 1 and "" or "s"); end
	if s < 120 then return n(math.max(s, 1), "second");
	elseif s < 7200 then return n(s / 60, "minute");
	elseif s < 172800 then return n(s / 3600, "hour");
	else return n(s / 86400, "day"); end
end

module:hook("user-registering", function (event)
	local ip = event.ip or (event.session and event.session.ip);
	local allowed, retry_ms, failed = check("registration", { ip = ip });
	if allowed then return; end
	event.allowed = false;
	if failed then
		event.error = errors.new({ type = "wait"; condition = "resource-constraint";
			text = "Registration is unavailable for a moment, try again later" });
	else
		-- As mod_register_limits' own throttle answers.
		event.error = errors.new({ type = "wait"; condition = "policy-violation";
			text = "Too many registrations from this IP address recently, try again " .. when(retry_ms) });
	end
	-- COMPAT pre-util.error
	event.reason = event.error.text;
	event.error_type = event.error.type;
	event.error_condition = event.error.condition;
end);

-- Before the password is checked: an address over its authentication_failure
-- limit (or banned) is refused without a try. The refusal is reported as a
-- real check too, so that it counts towards the autoban (a dry run does not).
module:hook("stanza/" .. xmlns_sasl .. ":auth", function (event)
	local session = event.origin;
	local ip = session and session.ip;
	local allowed, retry_ms, failed = check("authentication_failure", { ip = ip }, true);
	if allowed then return; end
	if not failed then
		check("authentication_failure", { ip = ip });
	end
	local text = failed and "Authentication is unavailable for a moment, try again later"
		or ("Too many failed authentication attempts from this IP address, try again " .. when(retry_ms));
	session.send(st.stanza("failure", { xmlns = xmlns_sasl }):tag("temporary-auth-failure"):up()
		:tag("text"):text(text));
	return true;
end, 10);

module:hook("authentication-failure", function (event)
	local session = event.session;
	-- Counting failures lets sluice's autoban rules ban password guessers.
	check("authentication_failure", { ip = session and session.ip });
end);

-- Every s2s-out connection through sluice's outgoing relay: sluice reads the
-- stream's `to`, decides, resolves (SRV, A/AAAA) and connects. STARTTLS and
-- certificates stay between the two servers.
if s2s_relay then
	local relay_host, relay_port = s2s_relay:match("^%[?([^%]]+)%]?:(%d+)$");
	if not relay_host then
		module:log("error", "sluice_s2s_relay must be host:port, not %q; s2s-out is not relayed", s2s_relay);
	else
		local basic = require "net.resolvers.basic";
		module:hook("s2sout-pre-connect", function (event)
			event.resolver = basic.new(relay_host, tonumber(relay_port), "tcp", {});
		end);
	end
end

-- Stanzas to remote domains: one `outgoing` check each, per destination
-- server and per local sender (and globally), on the federation side.
if check_outgoing then
	local jid_split = require "util.jid".split;
	local jid_bare = require "util.jid".bare;
	local bounced = 0;
	module:hook("route/remote", function (event)
		local stanza, origin = event.stanza, event.origin;
		local to_host = event.to_host;
		local sender = stanza.attr.from and jid_bare(stanza.attr.from);
		local node = sender and jid_split(sender);
		-- Waiting for sluice needs an async runner (c2s stanzas have one);
		-- stanzas from timers and components pass unchecked.
		if not async.ready() then return; end
		local targets = { server = to_host; user = node and sender or nil };
		local allowed, _, failed = check("outgoing", targets, nil, "federation");
		if allowed then return; end
		bounced = bounced + 1;
		-- sluice logs the account (hashed per its privacy settings) and
		-- counts the denial; this counter is for the server's own log.
		module:log("info", "outgoing stanza to %s refused (%s), %d so far", to_host,
			failed and "sluice failed" or "limit", bounced);
		local t = stanza.attr.type;
		if t ~= "error" and t ~= "result" and origin and origin.send then
			origin.send(st.error_reply(stanza, "wait", "resource-constraint",
				"Too many stanzas to " .. to_host .. ", try again later"));
		end
		return true;
	end, 100);
end
