# What the web UI worker processes of one instance share about live evaluations
# (IncidentGate::Evaluations::Shared): the places, the last verdicts, the news that openQA changed.
# Two Evaluations objects with a Shared object each stand for two workers: their locks are as
# separate as two processes' (flock locks belong to an open file, not to a process). The children
# are stand-ins whose answers the test gives when it wants, so nothing depends on timing.
use v5.20;
use warnings;
use feature 'signatures';
no warnings 'experimental::signatures';
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../lib";
use IGTest qw(tempdir wait_for);
use IncidentGate::Evaluations;
use IncidentGate::Evaluations::Shared;
use Mojo::IOLoop;
use Mojo::JSON 'encode_json';
use Mojo::Promise;
use POSIX '_exit';

my $dir = tempdir(CLEANUP => 1);
my (%asked, @errors);

# A worker: its evaluations, each asking %asked{worker}{key} for its answer.
sub worker ($name, %o) {
    return IncidentGate::Evaluations->new(
        max => 1, wait => 30, fresh => 3600,
        shared => IncidentGate::Evaluations::Shared->new(dir => $o{dir} // $dir),
        single => sub () { $o{single} // 0 },
        on_shared_error => sub ($m) { push @errors, "$name: $m" },
        run => sub ($key) { $asked{$name}{$key} = Mojo::Promise->new });
}

sub verdict ($result) { encode_json({result => $result}) }

# Settles the promise, running the loop until it has; ($outcome, @values), $outcome 'ok', 'busy'
# or 'error'.
sub settle ($p) {
    my @r;
    $p->then(sub (@v) { @r = ('ok', @v) },
        sub ($e) { @r = ((ref $e && $e->isa('IncidentGate::Evaluations::Busy') ? 'busy' : 'error'), $e) })->wait;
    return @r;
}

my ($a, $b) = (worker('a'), worker('b'));

subtest 'the place held by one worker is not taken by another' => sub {
    my $first = $a->verdict_p('101');
    ok $asked{a}{101}, 'a evaluates 101';
    my ($outcome, $busy) = settle(worker('single', single => 1)->verdict_p('102'));
    is $outcome, 'busy', 'a worker serving one connection at a time is turned away at once';
    like $busy->retry_after, qr/^[1-9][0-9]*$/, 'with a Retry-After';
    ok !$asked{single}, 'and evaluates nothing';
    my $waiting = $b->verdict_p('102');
    is $b->stats->{waiting}, 1, 'b waits for the place';
    ok !$asked{b}{102}, 'b does not evaluate while a holds the place';
    $asked{a}{101}->resolve(0, verdict('passed'));
    is_deeply [settle($first)], ['ok', 0, verdict('passed'), 0], 'a answered';
    ok wait_for(sub { $asked{b}{102} }, 10), 'b takes the place a freed';
    $asked{b}{102}->resolve(0, verdict('failed'));
    is_deeply [settle($waiting)], ['ok', 0, verdict('failed'), 0], 'b answered';
};

subtest 'a verdict one worker evaluated is given again by another' => sub {
    delete $asked{b}{101};
    my ($outcome, $status, $text, $age) = settle($b->verdict_p('101'));
    is_deeply [$outcome, $status, $text], ['ok', 0, verdict('passed')], "b gives a's verdict of 101";
    like $age, qr/^[0-9]+$/, 'with its age';
    ok !$asked{b}{101}, 'without asking openQA';
    is $b->stats->{reused}, 1, 'counted as reused';
    is $b->last_verdict('101')->{text}, verdict('passed'), 'and shows it as the last verdict';
};

subtest 'news of a change reaching one worker ends the reuse in all' => sub {
    $b->changed;
    delete $asked{a}{101};
    my $p = $a->verdict_p('101');
    ok $asked{a}{101}, 'a asks openQA again';
    $asked{a}{101}->resolve(0, verdict('failed'));
    is_deeply [(settle($p))[0 .. 2]], ['ok', 0, verdict('failed')], 'and gives the new verdict';
};

subtest 'an asker after a change does not join an evaluation that started before it' => sub {
    my $c = worker('c', fresh => 0);
    my $early = $c->verdict_p('401');
    ok $asked{c}{401}, 'c evaluates 401';
    my $first = $asked{c}{401};
    $b->changed;
    my $late = $c->verdict_p('401');
    is $c->stats->{waiting}, 1, 'the asker after the change waits for an evaluation of its own';
    $first->resolve(0, verdict('passed'));
    is_deeply [(settle($early))[0 .. 2]], ['ok', 0, verdict('passed')], 'the early asker gets the early verdict';
    ok wait_for(sub { $asked{c}{401} != $first }, 10), 'a second evaluation starts';
    $asked{c}{401}->resolve(0, verdict('failed'));
    is_deeply [(settle($late))[0 .. 2]], ['ok', 0, verdict('failed')], 'the late asker gets the new verdict';
};

subtest 'when the last change cannot be read, nothing is given again' => sub {
    my $c = worker('c');
    delete $asked{c}{101};
    my $p = $c->verdict_p('101');
    ok $asked{c}{101}, 'openQA is asked';
    $asked{c}{101}->resolve(0, verdict('passed'));
    settle($p);
    delete $asked{c}{101};
    unlink "$dir/changed";    # (a cleaner of TMPDIR, say)
    $p = $c->verdict_p('101');
    ok $asked{c}{101}, 'and asked again: a change cannot be ruled out';
    $asked{c}{101}->resolve(0, verdict('passed'));
    settle($p);
    $b->changed;    # the file again
};

subtest 'that a number has no jobs is not written down for the others' => sub {
    my $p = $a->verdict_p('999');
    $asked{a}{999}->resolve(0, verdict('no_jobs'));
    settle($p);
    ok !(grep {/999/} glob "$dir/*"), 'no file names it';
    $p = $b->verdict_p('999');
    ok $asked{b}{999}, 'b asks openQA itself';
    $asked{b}{999}->resolve(0, verdict('no_jobs'));
    settle($p);
};

subtest 'who would be turned away gets a recent verdict that no change has made old, with its age' => sub {
    my ($c, $d) = (worker('c'), worker('d', single => 1));
    unlink "$dir/changed";    # the change of a moment ago, in an earlier subtest
    my $p = $c->verdict_p('301');
    $asked{c}{301}->resolve(0, verdict('passed'));
    settle($p);
    local $IncidentGate::Evaluations::DEFAULTS{fresh} = 0;
    local $c->{fresh} = 0;
    local $d->{fresh} = 0;
    my $holding = $c->verdict_p('302');    # the only place
    ok $asked{c}{302}, 'c holds the place';
    my ($outcome, $status, $text, $age) = settle($d->verdict_p('301'));
    is_deeply [$outcome, $status, $text], ['ok', 0, verdict('passed')], 'd, without a place, gives the last verdict of 301';
    like $age, qr/^[0-9]+$/, 'with its age';
    ok !$asked{d}{301}, 'without asking openQA';
    is $d->stats->{stale}, 1, 'counted';
    $c->changed;
    ($outcome) = settle($d->verdict_p('301'));
    is $outcome, 'busy', 'once a change was told: turned away';
    {
        local $d->{stale} = 0;
        $c->{changed} = 0;
        unlink "$dir/changed";
        ($outcome) = settle($d->verdict_p('301'));
        is $outcome, 'busy', 'and a verdict older than `stale` is not given either';
    }
    $asked{c}{302}->resolve(0, verdict('failed'));
    settle($holding);
};

subtest 'a place is free again when its holder dies, and when the parent of a child lets go' => sub {
    pipe(my $r, my $w) or die;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        my $shared = IncidentGate::Evaluations::Shared->new(dir => $dir);
        my $place = $shared->acquire(1);
        syswrite $w, defined $place ? "held\n" : "none\n";
        sleep 60;
        _exit(0);
    }
    is scalar <$r>, "held\n", 'a process holds the only place';
    my $other = IncidentGate::Evaluations::Shared->new(dir => $dir);
    is $other->acquire(1), undef, 'no other gets it';
    kill KILL => $pid;
    waitpid $pid, 0;
    is $other->acquire(1), 0, 'once it died (kill -9), another takes it';

    # a child forked while its parent holds a place (the evaluation's child) keeps the open file
    my $child = fork // die "fork: $!";
    if (!$child) { sleep 60; _exit(0) }
    $other->release(0);
    is(IncidentGate::Evaluations::Shared->new(dir => $dir)->acquire(1), 0, 'released by the parent, the place is free while the child lives');
    kill KILL => $child;
    waitpid $child, 0;

    # a worker killed while its evaluation's child lives on (that child forgets the places)
    pipe($r, $w) or die;
    my $worker = fork // die "fork: $!";
    if (!$worker) {
        my $shared = IncidentGate::Evaluations::Shared->new(dir => $dir);
        defined $shared->acquire(1) or _exit(1);
        my $grandchild = fork // _exit(1);
        if (!$grandchild) { $shared->forget; syswrite $w, "$$\n"; sleep 60; _exit(0) }
        sleep 60;
        _exit(0);
    }
    chomp(my $orphan = <$r>);
    like $orphan, qr/^\d+$/, 'a worker holds the place, its child runs';
    kill KILL => $worker;
    waitpid $worker, 0;
    ok kill(0 => $orphan), 'the worker was killed, its child lives';
    my $another = IncidentGate::Evaluations::Shared->new(dir => $dir);
    is $another->acquire(1), 0, 'the place is free';
    $another->release(0);
    kill KILL => $orphan;
};

subtest 'a directory that is not ours alone: each worker alone, said once' => sub {
    my $open = tempdir(CLEANUP => 1) . '/open';
    mkdir $open, 0755 or die;
    chmod 0755, $open;
    my $c = worker('c', dir => $open);
    for my $key (qw(201 202)) {
        my $p = $c->verdict_p($key);
        ok $asked{c}{$key}, "c evaluates $key";
        $asked{c}{$key}->resolve(0, verdict('passed'));
        settle($p);
    }
    is scalar @errors, 1, 'one error' or diag explain \@errors;
    like $errors[0], qr/^c: evaluations are bounded per worker process only: \Q$open\E is not a directory of this user's alone$/,
      'naming the directory and what follows';
    is_deeply [glob "$open/*"], [], 'nothing written there';
};

done_testing;
