package IncidentGate::Evaluations;
# The one policy of every route that evaluates a verdict live (each evaluation is a forked child
# asking openQA):
#   - who asks for a submission already being evaluated (or waiting for a place) in this worker
#     process gets that evaluation's answer: no second child;
#   - at most `max` evaluations run at once in all the worker processes of the instance on this
#     host (the places of IncidentGate::Evaluations::Shared); one more waits up to `wait` seconds
#     for a place, with at most `queue` submissions waiting, and is then turned away (Busy, with a
#     Retry-After). A process that serves one connection at a time (`prefork -c 1`, as openQA's
#     service runs) does not wait: its waiting would hold the very worker that the evaluations'
#     children may need to be answered;
#   - a verdict is given again, with its age, for `fresh` seconds after its evaluation ended, in
#     every worker: many clients polling a dozen submissions cost openQA a dozen evaluations per
#     that time, however many they are, however fast they poll and whichever worker they reach;
#   - who would be turned away gets the last verdict instead, with its age, when it is less than
#     `stale` seconds old and no worker has been told of a change since: it is as good as a new
#     one would be, but for what reaches openQA without an event (the reason for `fresh`);
#   - an answer that a submission has no jobs is kept `unknown_for` seconds (by the worker that
#     asked: numbers nobody uses are not written down): one evaluation per that time, not one per
#     request;
#   - the last verdict of each submission is kept (at most `keep` per worker), for a page that must
#     turn its visitor away to show what was last known, and how old it is.
use Mojo::Base -base, -signatures;

use Mojo::IOLoop;
use Mojo::JSON 'decode_json';
use Mojo::Promise;
use POSIX 'ceil';
use Time::HiRes ();

# What new() does not set; read on each use, so that a test can change them as it goes.
our %DEFAULTS = (max => 2, wait => 10, queue => 64, fresh => 10, stale => 60, unknown_for => 60, keep => 1000);
for my $name (keys %DEFAULTS) {
    no strict 'refs';
    *$name = sub ($self) { $self->{$name} // $DEFAULTS{$name} };
}

# run: sub ($key) returning a promise of ($status, $text); $status 0 is a verdict (JSON text).
has 'run';
# an IncidentGate::Evaluations::Shared, or undef: this process alone (a test's app, or a directory
# that cannot be used, which on_shared_error is told of)
has 'shared';
has on_shared_error => sub { sub ($message) { warn "$message\n" } };
# whether this process serves one connection at a time; asked when it matters, not when the
# plugin is loaded (the server sets it up after that)
has single => sub { sub () { Mojo::IOLoop->singleton->max_connections == 1 } };

sub new ($class, %o) {
    my $self = $class->SUPER::new(%o);
    @$self{qw(pending order last stats)} = ({}, [], {}, {started => 0, shared => 0, reused => 0, stale => 0, turned_away => 0});
    $self->{running} = 0;
    $self->{average} = 1;    # seconds an evaluation takes, for Retry-After; adjusted as they end
    return $self;
}

# A promise of ($status, $text, $age) for $key (a normalized submission), $age the seconds since
# the evaluation ended (0: it ended for this asker); rejected with an
# IncidentGate::Evaluations::Busy when it is turned away, or with the evaluation's error.
sub verdict_p ($self, $key) {
    my $changed = $self->_changed_at;
    if (my $known = $self->_reusable($key, $changed)) {
        $self->{stats}{reused}++;
        return Mojo::Promise->resolve(0, $known->{text}, int(_now() - $known->{at}));
    }
    # an evaluation that started before the last change answers its own askers, not new ones
    my $pending = $self->{pending}{$key};
    if ($pending && ($pending->{t0} // _now()) >= $changed) {
        $self->{stats}{shared}++;
        return $pending->{promise};
    }
    $pending = $self->{pending}{$key} = {key => $key, promise => Mojo::Promise->new};
    if ($self->{running} < $self->max && defined(my $place = $self->_acquire)) { $self->_start($pending, $place) }
    elsif (@{$self->{order}} < $self->queue && !$self->single->()) {
        push @{$self->{order}}, $pending;
        $pending->{timer} = Mojo::IOLoop->timer($self->wait => sub { $self->_give_up($pending) });
        # a place another worker frees is not announced: looked for now and then
        $self->{poll} //= Mojo::IOLoop->recurring(0.1 => sub { $self->_next });
    }
    else { $self->_give_up($pending) }
    return $pending->{promise};
}

# openQA told this process that something changed (an event): verdicts evaluated before are not
# given again, by any worker (still shown by last_verdict, with their age).
sub changed ($self) {
    $self->{changed} = _now();
    my $shared = $self->_shared or return;
    eval { $shared->changed; 1 } or $self->_said("the other workers were not told of a change: $@");
}

# The last verdict of $key a worker saw: {text => JSON, at => epoch seconds}, or undef.
sub last_verdict ($self, $key) {
    my $shared = $self->_shared;
    my ($mine, $theirs) = ($self->{last}{$key}, $shared && eval { $shared->last_verdict($key) });
    return $mine && (!$theirs || $mine->{at} >= $theirs->{at}) ? $mine : $theirs;
}

sub stats ($self) {
    return {%{$self->{stats}}, running => $self->{running}, waiting => scalar @{$self->{order}}};
}

# Whether a kept verdict, $age seconds old, may stand for a new evaluation: for a short while, and
# one that the submission has no jobs (a number nobody uses, or not scheduled yet) for longer.
sub reusable ($known, $age, $fresh, $unknown_for) {
    return $age >= 0 && $age < ($known->{no_jobs} && $unknown_for > $fresh ? $unknown_for : $fresh);
}

# Seconds after which asking again has a fair chance: the evaluations ahead of a new one, spread
# over the places, times what one takes; at least 1, at most 60.
sub retry_after ($average, $ahead, $max) {
    my $s = ceil($average * (1 + $ahead / ($max || 1)));
    return $s < 1 ? 1 : $s > 60 ? 60 : $s;
}

sub _now () { Time::HiRes::time() }

# The kept verdict of $key that may be given again: evaluated after the last change any worker was
# told of ($changed, from _changed_at), and recent enough (instead of an evaluation, or instead of
# nothing when $turned_away).
sub _reusable ($self, $key, $changed, $turned_away = 0) {
    my $known = $self->last_verdict($key) or return undef;
    return undef unless $known->{started} >= $changed;
    my $fresh = $turned_away && $self->stale > $self->fresh ? $self->stale : $self->fresh;
    return reusable($known, _now() - $known->{at}, $fresh, $self->unknown_for) ? $known : undef;
}

# When this or any worker was last told of a change; just now when that cannot be read.
sub _changed_at ($self) {
    my $changed = $self->{changed} // 0;
    my $shared = $self->_shared or return $changed;
    my $theirs = eval { $shared->changed_at } // return _now();
    return $theirs > $changed ? $theirs : $changed;
}

# The shared state, or undef when this process is alone; a directory that cannot be used leaves it
# alone from then on, said once.
sub _shared ($self) {
    my $shared = $self->shared or return undef;
    return $shared if eval { $shared->check };
    $self->shared(undef);
    $self->_said("evaluations are bounded per worker process only: $@");
    return undef;
}

# Each message once per process: a broken directory stays broken for every request.
sub _said ($self, $message) {
    $message =~ s/\n\z//;
    $self->on_shared_error->($message) unless $self->{said}{$message}++;
}

# A place: a shared one's number, 'own' without sharing, undef when none is free (or the places
# cannot be opened: nobody evaluates then, rather than everybody).
sub _acquire ($self) {
    my $shared = $self->_shared or return 'own';
    my $place = eval { $shared->acquire($self->max) };
    $self->_said("no place to evaluate: $@") if !defined $place && $@;
    return $place;
}

sub _start ($self, $pending, $place) {
    $self->{running}++;
    $self->{stats}{started}++;
    my $t0 = $pending->{t0} = _now();
    my $key = $pending->{key};
    # released where it was taken, even if this process stops sharing meanwhile
    my $shared = $place eq 'own' ? undef : $self->shared;
    my $p = eval { $self->run->($key) } // Mojo::Promise->reject($@ || "the evaluation did not start\n");
    $p->then(
        sub ($status, $text = undef) {
            $pending->{promise}->resolve($status, $text, 0);
            eval { $self->_remember($key, $text, $t0) } if $status == 0;
            return;
        },
        # nothing returned: a promise returned would be adopted, and its rejection left unhandled
        sub ($err) { $pending->{promise}->reject($err); return }
    )->finally(
        sub {
            $self->{running}--;
            $shared->release($place) if $shared;
            delete $self->{pending}{$key} if ($self->{pending}{$key} // 0) == $pending;
            $self->{average} = 0.8 * $self->{average} + 0.2 * (_now() - $t0);
            $self->_next;
        });
}

sub _next ($self) {
    while ($self->{running} < $self->max && @{$self->{order}}) {
        my $place = $self->_acquire // last;
        my $pending = shift @{$self->{order}};
        Mojo::IOLoop->remove(delete $pending->{timer}) if $pending->{timer};
        $self->_start($pending, $place);
    }
    Mojo::IOLoop->remove(delete $self->{poll}) if $self->{poll} && !@{$self->{order}};
}

sub _give_up ($self, $pending) {
    @{$self->{order}} = grep { $_ != $pending } @{$self->{order}};
    delete $self->{pending}{$pending->{key}} if ($self->{pending}{$pending->{key}} // 0) == $pending;
    if (my $known = $self->_reusable($pending->{key}, $self->_changed_at, 1)) {
        $self->{stats}{stale}++;
        return $pending->{promise}->resolve(0, $known->{text}, int(_now() - $known->{at}));
    }
    $self->{stats}{turned_away}++;
    my $ahead = @{$self->{order}} + $self->{running};
    $pending->{promise}->reject(IncidentGate::Evaluations::Busy->new(
        retry_after => retry_after($self->{average}, $ahead, $self->max)));
}

sub _remember ($self, $key, $text, $started) {
    # an evaluation overtaken by one that started later (after a change) is not the last verdict
    return if $self->{last}{$key} && $self->{last}{$key}{started} > $started;
    my $verdict = eval { decode_json($text) };
    my $no_jobs = ref $verdict eq 'HASH' && ($verdict->{result} // '') eq 'no_jobs';
    my $known = {text => $text, at => _now(), started => $started, no_jobs => $no_jobs};
    $self->{last}{$key} = $known;
    my $shared = $no_jobs ? undef : $self->_shared;
    eval { $shared->keep($key, $known) } if $shared;
    my $last = $self->{last};
    return if keys %$last <= $self->keep;
    # the oldest tenth goes: a visitor walking through numbers cannot make this grow
    my @old = sort { $last->{$a}{at} <=> $last->{$b}{at} } keys %$last;
    delete @$last{@old[0 .. int(@old / 10)]};
}

package IncidentGate::Evaluations::Busy;
use Mojo::Base -base, -signatures;
use overload '""' => sub ($self, @) { $self->message . "\n" }, fallback => 1;

has retry_after => 1;
has message => 'too many verdicts are being evaluated, try again shortly';

1;
