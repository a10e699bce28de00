package OpenQA::WebAPI::Plugin::IncidentGate;
# Hands openQA's job and comment events to libincident_gate.so, which decides when an incident's
# tests are done, publishes `incident.done` and reports to IBS. Enable with
# `[global] plugins = IncidentGate` and configure in the `[incident_gate]` section of openqa.ini.
use Mojo::Base 'Mojolicious::Plugin', -signatures;

use IncidentGate::Evaluations;
use IncidentGate::Evaluations::Shared;
use IncidentGate::FFI qw(:status);
use Mojo::File;
use Mojo::IOLoop;
use Mojo::Promise;
use Mojo::JSON qw(decode_json encode_json);
use Mojo::Util;
use Time::HiRes ();

# comments_create/comments_delete: upstream's bulk comment routes (openQA since 2024), which the
# AMQP plugin does not forward; subscribing to a name an older openQA never emits is harmless.
# job_create and iso_create tell that testing goes on (a scheduled product still creating jobs,
# the quiet period after the newest job): no incident is decided before it is finished.
our @EVENTS = map { "openqa_$_" } qw(job_done job_cancel job_restart jobs_restart job_update_result
  comment_create comment_update comment_delete comments_create comments_delete job_create iso_create);
our @LIBRARY_PATHS = map { "$_/incident-gate/libincident_gate.so" }
  qw(/usr/lib64 /usr/lib /usr/local/lib64 /usr/local/lib);
use constant SECTION => 'incident_gate';
# Retry-After of a 503 because openQA cannot be asked just now
use constant RETRY_UNAVAILABLE => 30;
# a child that does not answer within this many seconds is killed: a fork of a process
# with threads can inherit a lock some thread held (SQLite's, say), and would wait for good
our $EVALUATION_TIMEOUT = 300;

sub register ($self, $app, $conf = {}) {
    $self->{app} = $app;
    $self->_routes($app);
    if (my $error = $self->_setup($app)) {
        $self->{error} = $error;
        $app->log->error("IncidentGate: $error; the plugin is inactive");
        return;
    }
    $app->log->info('IncidentGate: libincident_gate ' . $self->{lib}->version . ' from ' . $self->{lib}->library);
    # like openQA's AMQP plugin: subscribe once the event loop runs, i.e. in each web UI worker
    Mojo::IOLoop->next_tick(sub { $self->_subscribe });
}

# Reads the configuration and checks it with the library (a gate that starts nothing and is
# dropped again); answers an error message or undef.
sub _setup ($self, $app) {
    my $config = $app->config;
    my %settings;
    if (my $ini = $config->{ini_config}) {
        return 'no [' . SECTION . '] section in openqa.ini' unless $ini->SectionExists(SECTION);
        # Config::IniFiles merges repeated sections and keeps every value of a repeated key: either
        # is a mistake (the command refuses such a file too), never a choice to guess
        my $file = $ini->GetFileName;
        return 'more than one [' . SECTION . "] section in $file"
          if $file && 1 < grep { /^\s*\[\s*${\SECTION}\s*\]/ } Mojo::File->new($file)->slurp =~ /^.*$/mg;
        for my $key ($ini->Parameters(SECTION)) {
            return "key `$key` appears twice in [" . SECTION . ']' if 1 < (my @values = $ini->val(SECTION, $key));
            $settings{$key} = $values[0];
        }
    }
    elsif (ref $config->{+SECTION} eq 'HASH') { %settings = %{$config->{+SECTION}} }
    else { return 'no [' . SECTION . '] section in openqa.ini' }

    my $library = delete $settings{library} // $ENV{INCIDENT_GATE_LIBRARY} // (grep { -e } @LIBRARY_PATHS)[0]
      // return 'libincident_gate.so not found (tried ' . join(', ', @LIBRARY_PATHS)
      . '; set library in [' . SECTION . '])';
    $self->{lib} = eval { IncidentGate::FFI->new($library) } or return ($@ =~ s/\n\z//r);
    # the library's lines follow openQA's log (file, format, level) instead of going to stderr
    my $log = $app->log;
    $self->{lib}->on_log(sub ($level, $message) { $log->$level("IncidentGate: $message") });

    my $base_url = $config->{global} && $config->{global}{base_url};
    $settings{openqa_url} //= $base_url if $base_url;
    if (($settings{store_url} // '') eq 'openqa') {
        $settings{store_url} = eval { openqa_store_url($app) } // return "store_url = openqa: $@" =~ s/\n\z//r;
    }
    $self->{config_json} = encode_json({map { $_ => "$settings{$_}" } keys %settings});
    # the workers (forks of this process) bound their evaluations together
    $self->{shared} = eval { IncidentGate::Evaluations::Shared->create }
      or $app->log->error("IncidentGate: evaluations are bounded per worker process only: $@" =~ s/\n\z//r);
    my (undef, $status, $error) = $self->{lib}->gate($self->{config_json});
    return "invalid configuration in [" . SECTION . "]: $error (" . status_name($status) . ')' if $status;
    return undef;
}

# `store_url = openqa`: the database openQA itself is connected to (its schema's connection,
# from database.ini or TEST_PG), as a libpq URL; the store keeps to the schema incident_gate.
sub openqa_store_url ($app) {
    my $schema = $app->can('schema') && $app->schema or die "openQA's database is not known here\n";
    my $info = $schema->storage->connect_info // [];
    my ($dsn, $user, $password) = ref $info->[0] eq 'HASH' ? @{$info->[0]}{qw(dsn user password)} : @$info;
    return store_url_from_dsn($dsn, $user, $password);
}

# DBI:Pg:dbname=openqa;host=…;port=… (and user, password) → postgresql://user:password@host:port/dbname;
# a socket directory as host is percent-encoded, as libpq's URLs have it.
sub store_url_from_dsn ($dsn, $user = undef, $password = undef) {
    die "openQA's database is not PostgreSQL (DBI:Pg:…)\n" unless ($dsn // '') =~ /^dbi:Pg:(.*)$/i;
    my %dsn = map { /^\s*([^=]+?)\s*=\s*(.*?)\s*$/ ? (lc($1) => $2) : () } split /;/, $1;
    my $db = delete $dsn{dbname} // delete $dsn{database} // delete $dsn{db}
      // die "openQA's database DSN names no database\n";
    $user //= delete $dsn{user};
    $password //= delete $dsn{password};
    my $esc = sub ($text) { Mojo::Util::url_escape($text, '^A-Za-z0-9\-._~') };
    my $host = delete $dsn{host} // '/var/run/postgresql';
    my $url = 'postgresql://';
    $url .= $esc->($user) . (defined $password && length $password ? ':' . $esc->($password) : '') . '@'
      if defined $user && length $user;
    $url .= $esc->($host);
    $url .= ':' . delete $dsn{port} if defined $dsn{port};
    $url .= '/' . $esc->($db);
    my @params = map { "$_=" . $esc->($dsn{$_}) } grep { /^(?:sslmode|connect_timeout|application_name)$/ } sort keys %dsn;
    $url .= '?' . join('&', @params) if @params;
    return $url;
}

# The gate of this process, created on first use (never in the prefork manager).
sub _gate ($self) {
    return $self->{gate} if $self->{gate} && $self->{gate_pid} == $$;
    my ($gate, $status, $error) = $self->{lib}->gate($self->{config_json});
    die "cannot create the gate: $error (" . status_name($status) . ")\n" unless $gate;
    @$self{qw(gate gate_pid)} = ($gate, $$);
    return $gate;
}

sub _subscribe ($self) {
    # the engine's lines wait in the library until this process calls it: collect them now and then
    Mojo::IOLoop->recurring(1 => sub { $self->{lib}->log_poll });
    return unless eval { require OpenQA::Events; 1 };
    for my $name (@EVENTS) {
        OpenQA::Events->singleton->on($name => sub ($emitter, $args) { $self->_submit($name, $args) });
    }
}

# Runs inside the request that caused the event: must neither die nor block (submit only queues).
sub _submit ($self, $name, $args) {
    eval {
        my ($status, $error);
        eval {
            die "event arguments are not [user_id, connection_id, name, data]\n" unless ref $args eq 'ARRAY';
            # whether or not the gate takes it: openQA changed, verdicts of before are not given again
            $self->_evaluations->changed;
            ($status, $error) = $self->_gate->submit($name, encode_json(_copy($args->[3])));
            1;
        } or ($status, $error) = (undef, $@ =~ s/\n\z//r);
        $self->{app}->log->warn("IncidentGate: $name event not taken"
              . (defined $status ? ' (' . status_name($status) . ')' : '') . ": $error")
          if defined $error;
        1;
    } or eval { warn "IncidentGate: $name: $@" };
}

# A deep copy, so encoding never touches the event data other subscribers see.
sub _copy ($v, $depth = 0) {
    die "event data nested too deeply\n" if $depth > 32;
    return {map { $_ => _copy($v->{$_}, $depth + 1) } keys %$v} if ref $v eq 'HASH';
    return [map { _copy($_, $depth + 1) } @$v] if ref $v eq 'ARRAY';
    return $v;
}

# Public: what openQA shows anyone anyway (verdicts, decisions, the incidents page). Configuration
# and delivery internals only for operators, under openQA's own API authentication (the route its
# ObsRsync plugin uses too); without that route (not openQA) they are not served at all.
sub _routes ($self, $app) {
    my $r = $app->routes;
    my $api = $r->find('api_public') // $r->any('/api/v1');
    $api->get('/incident_gate/status' => sub ($c) { $self->_status($c) })->name('incident_gate_status');
    $api->get('/incident_gate/incidents' => sub ($c) { $self->_list_json($c) })->name('incident_gate_list');
    $api->get('/incident_gate/incidents/<incident:num>' => sub ($c) { $self->_evaluate($c) })
      ->name('incident_gate_incident');
    # the incidents page, in openQA's layout (templates next to this module, as ObsRsync does)
    push @{$app->renderer->paths}, Mojo::File->new(__FILE__)->sibling('IncidentGate', 'templates')->to_string;
    $r->get('/incident_gate' => sub ($c) { $self->_index_page($c) })->name('incident_gate_index');
    $r->get('/incident_gate/<incident>' => [incident => qr/(?:(?:ibs|git|gitea):)?[0-9]+/])
      ->to(cb => sub ($c) { $self->_incident_page($c) })->name('incident_gate_page');
    $app->config->{plugin_links}{operator}{Incidents} = 'incident_gate_index';
    # a submission by kind and number: 12345 or ibs:12345 (IBS incident), git:124 (Gitea PR)
    $api->get('/incident_gate/submissions/<submission>' => sub ($c) { $self->_evaluate($c, 1) })
      ->name('incident_gate_submission');
    # beside openQA's own /admin/influxdb/jobs, public as those are (telegraf reads them)
    $r->get('/admin/influxdb/incident_gate' => sub ($c) { $self->_influxdb($c) })->name('incident_gate_influxdb');
    my $operator = $r->find('api_ensure_operator') or return;
    $operator->get('/incident_gate/internals' => sub ($c) { $self->_internals($c) })
      ->name('incident_gate_internals');
}

# openQA's own layout where there is one; a plain page elsewhere (the plugin's test app).
sub _layout ($self, $c) {
    $self->{layout} //= $c->app->renderer->template_path({template => 'layouts/bootstrap', format => 'html',
        handler => 'ep'}) ? 'bootstrap' : 'incident_gate_plain';
}

our %STATES = (pending => 'waiting for jobs', coverage => 'waiting for expected coverage',
    delivery_pending => 'delivery pending', failed => 'failed', passed => 'passed', reported => 'reported',
    no_jobs => 'no jobs');
our @STATE_ORDER = qw(pending coverage delivery_pending failed passed reported no_jobs);

# `12345`, `ibs:12345` → `12345`; `git:124`, `gitea:124` → `git:124`; undef for anything else.
sub _submission ($text) {
    return undef unless ($text // '') =~ /^(?:(ibs|git|gitea):)?0*([1-9][0-9]{0,18})$/;
    return ($1 && $1 ne 'ibs') ? "git:$2" : $2;
}

# Delivery outcomes are for users: they say what happened, never where the services live.
sub _public_text ($text) {
    return $text unless defined $text;
    return $text =~ s{\b[a-z][a-z0-9+.-]*://[^\s"'<>]+}{<url>}gir;
}

# What went wrong in a delivery that is retried (a broker's or IBS's error message) may name
# configuration: operators (logged in to openQA) see it, anyone else that it is being retried.
sub _public_list ($list, $operator) {
    for my $row (@{$list->{incidents} // []}, @{$list->{decisions} // []}) {
        for my $d (@{$row->{deliveries} // []}) {
            $d->{outcome} = "not delivered yet, retrying ($d->{attempts} attempts so far)"
              if !$operator && $d->{state} eq 'queued' && $d->{attempts};
            $d->{outcome} = _public_text($d->{outcome});
        }
        if (($row->{state} // '') eq 'delivery_pending' && !$operator) {
            my ($d) = grep { $_->{state} eq 'queued' } @{$row->{deliveries} // []};
            $row->{why} = $d ? "$d->{sink}: " . ($d->{outcome} // 'not delivered yet') : undef;
        }
        $row->{why} = _public_text($row->{why}) if exists $row->{why};
    }
    return $list;
}

sub _is_operator ($c) {
    return 0 unless $c->app->renderer->get_helper('is_operator');
    return eval { $c->is_operator } ? 1 : 0;
}

# The incidents of the state directory for a query: (list) or (undef, $error).
sub _incidents ($self, $c, %query) {
    return (undef, "incident-gate is inactive: $self->{error}") if $self->{error};
    my ($status, $json) = eval { $self->_gate->incidents(encode_json(\%query)) };
    ($status, $json) = (IG_PANIC, $@ =~ s/\n\z//r) unless defined $status;
    return (undef, $json) unless $status == IG_OK;
    return (_public_list(decode_json($json), _is_operator($c)));
}

sub _query ($c) {
    my %q;
    my $state = $c->param('state') // '';
    $q{state} = $state if exists $STATES{$state};
    my $search = $c->param('q') // '';
    $search =~ s/\D//g;
    $q{search} = substr($search, 0, 20) if length $search;
    my $limit = $c->param('limit') // '';
    $q{limit} = 0 + $limit if $limit =~ /^[1-9][0-9]{0,3}$/;
    return %q;
}

sub _list_json ($self, $c) {
    return if $self->_inactive($c);
    my ($list, $error) = $self->_incidents($c, _query($c));
    return $c->render(json => {error => $error}, status => 500) unless $list;
    $c->render(json => $list);
}

sub _index_page ($self, $c) {
    my %q = _query($c);
    my ($list, $error) = $self->_incidents($c, %q);
    $c->stash(layout => $self->_layout($c), title => 'Incidents', list => $list, error => $error,
        states => \%STATES, state_order => \@STATE_ORDER, state => $q{state} // '', search => $q{search} // '');
    $c->render(template => 'incident_gate/index', status => $list ? 200 : 503);
}

sub _incident_page ($self, $c) {
    my $incident = $c->param('incident');
    $c->stash(layout => $self->_layout($c), title => "Incident $incident", incident => $incident,
        states => \%STATES, verdict => undef, verdict_error => undef, verdict_age => undef, record => undef, decisions => []);
    $incident = _submission($incident)
      // return $c->render(template => 'incident_gate/incident', status => 400,
        error => 'the incident must be a positive number below 10^19, or git:<pull request>');
    my $pr = $incident =~ /^git:(\d+)/ ? $1 : undef;
    $c->stash(title => $pr ? "Pull request $pr" : "Incident $incident");
    my ($list, $error) = $self->_incidents($c, submission => $incident);
    $c->stash(incident => $incident, error => $error, record => $list && $list->{incidents}[0],
        decisions => $list ? $list->{decisions} // [] : []);
    return $c->render(template => 'incident_gate/incident', status => 503) unless $list;
    $c->render_later;
    _let_go($c);
    $self->_evaluations->verdict_p($incident)->then(
        sub ($status, $text, $age = 0) {
            return unless $c->tx;    # the visitor went away meanwhile
            return $c->stash(verdict => decode_json($text), verdict_age => $age || undef) if $status == IG_OK;
            $self->_last_verdict($c, $incident,
                'openQA could not be asked just now (' . status_name($status) . ')', 200);
        }
    )->catch(
        sub ($err) {
            return unless $c->tx;
            my $busy = ref $err && $err->isa('IncidentGate::Evaluations::Busy');
            $self->_last_verdict($c, $incident, $busy ? $err->message : 'openQA could not be asked just now',
                $busy ? 503 : 200, $busy && $err->retry_after);
        }
    )->finally(sub { $c->render(template => 'incident_gate/incident') if $c->tx });
}

# A worker that serves one connection at a time (`prefork -c 1`) would keep serving an idle
# keep-alive connection for seconds after answering, and the children evaluating in other workers
# need it to be answered by openQA: it closes the connection once it has answered.
sub _let_go ($c) {
    $c->res->headers->connection('close') if Mojo::IOLoop->singleton->max_connections == 1;
}

# Instead of a verdict: why there is none, and the last one this process saw with its age.
sub _last_verdict ($self, $c, $incident, $why, $code, $retry_after = undef) {
    $c->stash(verdict_error => $why, status => $code);
    $c->res->headers->header('Retry-After' => $retry_after) if $retry_after;
    my $last = $self->_evaluations->last_verdict($incident) or return;
    $c->stash(verdict => decode_json($last->{text}), verdict_age => int(abs(Time::HiRes::time() - $last->{at})));
}

# The evaluations of this process (each prefork worker has its own, bounded with the others').
sub _evaluations ($self) {
    return $self->{evaluations} if $self->{evaluations} && $self->{evaluations_pid} == $$;
    $self->{evaluations_pid} = $$;
    my $log = $self->{app}->log;
    return $self->{evaluations} = IncidentGate::Evaluations->new(
        run => sub ($key) { $self->_evaluate_p($key) },
        shared => $self->{shared},
        on_shared_error => sub ($message) { $log->error("IncidentGate: $message") });
}

sub _inactive ($self, $c) {
    return 0 unless $self->{error};
    $c->render(json => {error => "incident-gate is inactive: $self->{error}"}, status => 503);
    return 1;
}

# The full ig_gate_status document, or undef after rendering the error.
sub _gate_status ($self, $c) {
    return undef if $self->_inactive($c);
    my ($status, $json) = eval { $self->_gate->status };
    ($status, $json) = (IG_PANIC, $@) unless defined $status;
    return decode_json($json) if $status == IG_OK;
    $c->render(json => {error => $json}, status => 500);
    return undef;
}

sub _status ($self, $c) {
    my $s = $self->_gate_status($c) // return;
    my $engine = $s->{engine} // {};
    my @decisions = map {
        my $d = $_;
        +{map { $_ => $d->{$_} } qw(incident request result decided_at)}
    } @{$engine->{recent_decisions} // []};
    $c->render(json => {version => $s->{version}, recent_decisions => \@decisions,
        pending_incidents => $engine->{pending_incidents} // []});
}

# The lines come from the state directory alone: answering asks neither openQA nor IBS.
sub _influxdb ($self, $c) {
    return $c->render(text => "incident-gate is inactive: $self->{error}\n", status => 503) if $self->{error};
    my ($status, $text) = eval { $self->_gate->metrics };
    ($status, $text) = (IG_PANIC, $@) unless defined $status;
    return $c->render(text => $text, format => 'txt') if $status == IG_OK;
    $c->render(text => "$text\n", format => 'txt', status => 500);
}

sub _internals ($self, $c) {
    my $s = $self->_gate_status($c) // return;
    $c->render(json => {%$s, evaluations => $self->_evaluations->stats});
}

# ig_gate_evaluate asks openQA and blocks: run it in a forked child (the library supports that); a
# gate that has not started its engine in the child only evaluates. A promise of ($status, $text)
# for a submission as _submission names it; only through _evaluations, which bounds them.
sub _evaluate_p ($self, $submission) {
    my $child = Mojo::IOLoop->subprocess;
    my $timeout = $EVALUATION_TIMEOUT;
    my $killed;
    my $timer = Mojo::IOLoop->timer($timeout => sub { $killed = kill KILL => $child->pid if $child->pid });
    return $child->run_p(
        sub {
            $self->{shared}->forget if $self->{shared};
            my ($gate, @failed) = $self->{lib}->gate($self->{config_json});
            return @failed unless $gate;
            return $gate->evaluate_submission($submission);
        }
    )->catch(sub ($err) { die $killed ? "no verdict within $timeout s: the evaluation was stopped\n" : $err })
      ->finally(sub { Mojo::IOLoop->remove($timer) });
}

sub _evaluate ($self, $c, $by_kind = 0) {
    return if $self->_inactive($c);
    my $incident = $c->param($by_kind ? 'submission' : 'incident');
    if ($by_kind) {
        $incident = _submission($incident) // return $c->render(
            json => {error => 'submission must be <incident>, ibs:<incident> or git:<pr>, numbers below 10^19'},
            status => 400
        );
    }
    else {
        return $c->render(json => {error => 'incident must be a positive number below 10^19'}, status => 400)
          unless $incident =~ /^0*([1-9][0-9]{0,18})$/;
        $incident = $1;
    }
    $c->render_later;
    _let_go($c);
    $self->_evaluations->verdict_p($incident)->then(
        sub ($status, $text, $age = 0) {
            return unless $c->tx;    # the asker went away meanwhile
            if ($status == IG_OK) {
                # HTTP's Age: how long ago openQA was asked for this verdict
                $c->res->headers->header(Age => $age);
                return $c->render(data => $text, format => 'json');
            }
            # 503 invites a retry; openQA refusing or answering unusably will not change by one
            my $code
              = $status == IG_UNAVAILABLE ? 503
              : $status == IG_OPENQA_REFUSED ? 502
              : $status == IG_INVALID_ARGUMENT ? 400
              : 500;
            $c->res->headers->header('Retry-After' => RETRY_UNAVAILABLE) if $code == 503;
            $c->render(json => {error => $text, status => status_name($status)}, status => $code);
        }
    )->catch(
        sub ($err) {
            return unless $c->tx;
            if (ref $err && $err->isa('IncidentGate::Evaluations::Busy')) {
                $c->res->headers->header('Retry-After' => $err->retry_after);
                return $c->render(json => {error => $err->message}, status => 503);
            }
            $self->{app}->log->error("IncidentGate: evaluating incident $incident failed: $err");
            my $code = $err =~ /^no verdict within/ ? 504 : 500;
            $c->render(json => {error => "evaluation failed: $err"}, status => $code);
        });
}

1;
