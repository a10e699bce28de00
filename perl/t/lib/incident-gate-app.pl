#!/usr/bin/env perl
# A stand-in for openQA's web UI as far as the plugin sees it: openQA's config handling (an
# openqa.ini read into a Config::IniFiles object at $app->config->{ini_config}, [global] copied into
# $app->config->{global}), its plugin loading, and OpenQA::Events (t/lib/OpenQA/Events.pm).
# Configured by $IG_TEST_OPENQA_INI; logs to $IG_TEST_LOG if set. Also runs under `prefork`. Its API
# routes and their operator authentication are named as in openQA (OpenQA::WebAPI::startup).
use Mojolicious::Lite -signatures;
use Config::IniFiles;
use Mojo::JSON 'encode_json';
use OpenQA::Events;

my @log;
app->defaults->{ig_test_log} = \@log;
app->log->level('debug');
app->log->on(message => sub ($log, $level, @lines) { push @log, "[$level] @lines" });
if (my $file = $ENV{IG_TEST_LOG}) { app->log->path($file) }
else { open my $null, '>', '/dev/null' or die; app->log->handle($null) }

if (my $file = $ENV{IG_TEST_OPENQA_INI}) {
    my $ini = Config::IniFiles->new(-file => $file) or die "cannot read $file: @Config::IniFiles::errors\n";
    app->config->{ini_config} = $ini;
    my @global = $ini->SectionExists('global') ? $ini->Parameters('global') : ();
    app->config->{global}{$_} = $ini->val(global => $_) for @global;
}

# openQA's API routes as plugins find them by name: `api_public` (/api/v1, no authentication) and
# `api_ensure_operator` under it (Auth#auth_operator: 403 without an operator's API key). The
# stand-in knows two keys and skips openQA's request signature, which is openQA's business.
my $api_public = app->routes->any('/api/v1')->name('api_public');
$api_public->under('/' => sub ($c) {
    my $key = $c->req->headers->header('X-API-Key') // '';
    return 1 if $key eq 'IGTEST-OPERATOR';
    my $error = $key eq 'IGTEST-USER' ? 'Operator level required' : $key ? 'api key not found' : 'no api key';
    $c->render(json => {error => $error}, status => 403);
    return undef;
})->name('api_ensure_operator');

# openQA: push the plugin namespace, then `$app->plugin($_)` for each name in [global] plugins
push @{app->plugins->namespaces}, 'OpenQA::WebAPI::Plugin';
plugin $_ for split ' ', app->config->{global}{plugins} // 'IncidentGate';

# a subscriber after the plugin's, like openQA's AMQP plugin: it must still see every event, unchanged
no warnings 'once';
my @seen;
app->defaults->{ig_test_seen} = \@seen;
Mojo::IOLoop->next_tick(
    sub {
        for my $name (@OpenQA::WebAPI::Plugin::IncidentGate::EVENTS) {
            OpenQA::Events->singleton->on(
                $name => sub ($e, $args) { push @seen, [$name, eval { encode_json($args->[3]) } // "bad: $@"] });
        }
    });

get '/ping' => {text => 'pong'};
get '/pid' => sub ($c) { $c->render(json => {pid => $$}) };

# emits one event in this process, like a web UI worker finishing a request: body = the event args
post '/test/emit' => sub ($c) {
    my $args = $c->req->json;
    OpenQA::Events->singleton->emit($args->[2], $args);
    $c->render(json => {pid => $$, seen => scalar @seen});
};

app->start;
